"""Query/key SAEs of attention heads (the seed 002 study): an SAE on one head's query vectors and one on the key
vectors of its key/value head, and what they explain about where the head attends.

    heads.py       which hooks and heads a pair reads (grouped-query attention: the query heads a key SAE serves),
                   mismatched pairs refused, the head's score from vectors in the SAEs' space
    pattern.py     pattern KL from reconstructed q / k / both, the head's induction / previous-token scores from them,
                   the reconstructed pattern of one prompt and the features that move one score
    positional.py  each feature's top activations: positions (positional features), tokens ("I am" / "I follow")
    matrix.py      query x key feature scores by modal position, against relative offset, token partners
    intervene.py   an "I follow [X]" key feature removed or scaled: induction on X against the other tokens
    objective.py   pairs trained with a pattern-KL term beside MSE
The whole study is one job, `attnsae.jobs.qk_study` (`attnsae qk-study`)."""
