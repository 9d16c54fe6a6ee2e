"""The papers' experiments: head behaviour scores, head ablation, induction by prefix length, IOI (a package),
induction features and case studies. An experiment returns an `attnsae.results.Result`, written by `attnsae.results.write`."""
