"""Feature experiments: induction features (app. F), a feature against a proxy (3.3), head polysemanticity (app. J)."""

from __future__ import annotations

import argparse

from ..experiments.case_study import run_case_study
from ..experiments.induction_features import run_induction_features
from ..experiments.polysemanticity import run_polysemanticity
from . import args as a


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "induction-features", help="find '<token> is next by induction' features: attribution to induction heads, then "
        "behaviour on repeated bigrams, vs a control group (paper app. F)",
        description="Selection: features with weight-based attribution >= --threshold to one of the layer's induction heads. "
        "Behaviour: t = the feature's top direct-logit token (--token next: the token it most often precedes); over up to "
        "--per-feature windows containing t, at every bigram 'A t' the feature should fire at A when the bigram occurred "
        "earlier in the window (a later instance) and not at "
        "its first instance. Pass rate = fired later instances / later instances; passes at > 0.6. Controls: random live "
        "features with attribution < 0.1 to the heads. Writes induction_features.json and .png (pass-rate histograms).",
        epilog="example: attnsae induction-features --sae runs/layers/L18/sae --head 18.6 "
        "--out runs/experiments/induction_features_L18",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_inputs(p, 2000)
    p.add_argument("--head", action="append", default=[], help="LAYER.HEAD of an induction head in the SAE's layer, "
                   "repeatable (default: the layer's heads with induction score >= 0.3 on repeated random tokens)")
    p.add_argument("--threshold", type=a.FRACTION, default=0.6,
                   help="selection: attribution to one head >= this (default: %(default)s)")
    p.add_argument("--pooled", action="store_true", help="selection on the attribution summed over the heads")
    p.add_argument("--per-feature", type=a.POSITIVE, default=200,
                   help="windows containing the token, per feature (default: %(default)s)")
    p.add_argument("--control", type=a.COUNT, default=200, help="random control features (default: %(default)s)")
    p.add_argument("--repeat-windows", type=a.COUNT, default=300, help="windows on which each feature's P(repeated token | "
                   "fires) and P(next token predicted by induction | fires) are measured; 0 skips (default: %(default)s)")
    p.add_argument("--token", choices=["logit", "next"], default="logit", help="the token t tested per feature: logit "
                   "(paper: its top direct-logit token) or next (the token most often next where it fires, on the "
                   "--repeat-windows sample; for middle layers, whose features act through later layers)")
    p.add_argument("--repeat-half", action="store_true", help="test on windows holding their first half twice, so every "
                   "bigram of that half recurs and nearly every feature is testable (runs the model; a --store gives only "
                   "the windows)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run_induction_features_cmd)

    p = sub.add_parser(
        "case-study", help="one feature against a proxy: specificity and expected-value plots, sensitivity and its "
        "false negatives (paper 3.3, app. E, G, H)",
        description="PROXY is one of (TOKEN: a token's text verbatim after the colon, leading space included, or #ID):\n"
        "  induction:TOKEN     TOKEN is next by induction (an earlier 'A TOKEN' and the current token is A)\n"
        "  after:TOKEN:N       the N tokens after TOKEN, stopping at punctuation ('question starting with Which')\n"
        "  context:T1,T2,...   at or after any of these tokens ('text about pets')\n"
        "  token:TOKEN         the current token is TOKEN\n"
        "  inside:OPEN:CLOSE   inside an unclosed OPEN in the text so far (e.g. inside:(:) )\n"
        "Specificity: histogram of nonzero activations split by proxy true/false; expected value: per bin, sum of "
        "activations / tokens. Sensitivity: fraction of proxy-true tokens where the feature fires. Writes "
        "case_study_L<l>_F<i>.json and .png.",
        epilog="example: attnsae case-study --sae runs/main/sae --store runs/main/store --feature 1951 --proxy 'inside:(:)' "
        "--out runs/experiments/case_study",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_inputs(p, 2000)
    p.add_argument("--feature", type=a.COUNT, required=True, help="feature index")
    p.add_argument("--proxy", required=True, help="the proxy, e.g. 'induction: board' (see above)")
    p.add_argument("--bins", type=a.POSITIVE, default=40, help="activation bins (default: %(default)s)")
    p.add_argument("--show", type=a.COUNT, default=50, help="false negatives / false positives listed (default: %(default)s)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run_case_study_cmd)

    p = sub.add_parser(
        "polysemanticity", help="classify every head from the families of its top features: monosemantic, minor "
        "exception, bisemantic, polysemantic (paper app. J, table 3)",
        description="Each head's top --k live features by weight-based attribution get a family: from --labels (JSON "
        "{\"feature_id\": \"label\"}, keys '1951' or 'L15.F1951'), or automatically from the mechanism of their top "
        "activating examples (the top DFA source position: attention sink, current token, duplicate token, induction, "
        "previous token, else the source token's text; 'mixed' when no mechanism covers half the examples). A head is "
        "monosemantic (one family), minor exception (all but 1-2), bisemantic (two families) or polysemantic. Writes "
        "polysemanticity.json, .md and .png.",
        epilog="example: attnsae polysemanticity --sae runs/main/sae --store runs/main/store --stats runs/main/heads/stats "
        "--out runs/experiments/polysemanticity_L15",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_inputs(p, 2000, multi_sae=True, store_windows="all")
    p.add_argument("--labels", default=None, help="a person's labels, JSON {\"feature_id\": \"label\"}")
    p.add_argument("--stats", default=None, help="folder of L<layer>.safetensors feature statistics computed on the same "
                   "--store (as `attnsae report` writes in its stats/)")
    p.add_argument("--k", type=a.POSITIVE, default=10, help="top features per head (default: %(default)s)")
    p.add_argument("--examples", type=a.POSITIVE, default=10, help="top activating examples per feature for automatic "
                   "families (default: %(default)s)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run_polysemanticity_cmd)


def run_induction_features_cmd(args) -> None:
    a.one_sae(args, "induction-features")
    a.report(run_induction_features(a.input_spec(args), args.head, threshold=args.threshold, pooled=args.pooled,
                                    n_control=args.control, per_feature=args.per_feature,
                                    repeat_windows=args.repeat_windows, repeat_half=args.repeat_half, token=args.token),
             args)


def run_case_study_cmd(args) -> None:
    a.one_sae(args, "case-study")
    a.report(run_case_study(a.input_spec(args), args.feature, args.proxy, bins=args.bins, n_show=args.show), args)


def run_polysemanticity_cmd(args) -> None:
    a.report(run_polysemanticity(a.input_spec(args), labels=args.labels, stats=args.stats, k=args.k,
                                 n_examples=args.examples), args)
