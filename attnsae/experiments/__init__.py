"""The papers' experiments: head behaviour scores, induction by prefix length, head ablation, IOI."""
