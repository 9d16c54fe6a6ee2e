"""The few numbers that define a model's architecture, for every supported family."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# What a family's architecture does differently, as flags the transformer and the analyses read
# (TransformerLens's approach: architectures as config, not as branches on a name).
_LLAMA = dict(norm="rmsnorm", norm_gain_offset=0.0, post_norms=False, qk_norm=False, biases=False, qkv_bias=False,
              gated_mlp=True, act_fn="silu", embed_scale=False, learned_pos=False, parallel_attn_mlp=False)
_GEMMA = _LLAMA | dict(norm_gain_offset=1.0, act_fn="gelu_tanh", embed_scale=True)
FAMILY_TRAITS = {
    "gpt2": dict(norm="layernorm", norm_gain_offset=0.0, post_norms=False, qk_norm=False, biases=True, qkv_bias=True,
                 gated_mlp=False, act_fn="gelu_tanh", embed_scale=False, learned_pos=True, parallel_attn_mlp=False),
    # checkpoints that exist only in TransformerLens's format (GELU-2L, attn-only-Nl): GPT-2's layout, exact GELU,
    # an unembedding bias, and no MLP at all in the attention-only models
    "transformer_lens": dict(norm="layernorm", norm_gain_offset=0.0, post_norms=False, qk_norm=False, biases=True,
                             qkv_bias=True, gated_mlp=False, act_fn="gelu", embed_scale=False, learned_pos=True,
                             parallel_attn_mlp=False, unembed_bias=True),
    # GPT-NeoX (Pythia): attention and MLP both read the block's input (no resid_mid), rotary on part of each head
    "gpt_neox": dict(norm="layernorm", norm_gain_offset=0.0, post_norms=False, qk_norm=False, biases=True, qkv_bias=True,
                     gated_mlp=False, act_fn="gelu", embed_scale=False, learned_pos=False, parallel_attn_mlp=True),
    "llama": _LLAMA,
    "mistral": _LLAMA,  # Llama with a sliding window on every layer
    "qwen2": _LLAMA | dict(qkv_bias=True),
    "gemma": _GEMMA,  # Gemma 1 (Gemma-2B: multi-query attention)
    "gemma2": _GEMMA | dict(post_norms=True),
    "gemma3": _GEMMA | dict(post_norms=True, qk_norm=True),
}
FAMILIES = tuple(FAMILY_TRAITS)
TRAITS = sorted({t for traits in FAMILY_TRAITS.values() for t in traits})  # a trait a family leaves out is False


@dataclass
class ModelConfig:
    family: str  # one of FAMILIES
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int = 2048
    n_kv_heads: int | None = None  # grouped-query attention; None means n_heads
    norm_eps: float = 1e-5
    rope_theta: float | None = None  # None: learned absolute positions (GPT-2)
    rope_local_theta: float | None = None  # Gemma 3 sliding-window layers use another base
    rotary_dim: int | None = None  # rotary on the first rotary_dim of each head's d_head (GPT-NeoX); None: all
    sliding_window: int | None = None
    layer_types: list[str] | None = None  # per layer: "full_attention" | "sliding_attention"
    attn_scale: float | None = None  # None means 1/sqrt(d_head)
    attn_softcap: float | None = None  # Gemma 2: scores -> c * tanh(scores / c) before the mask
    final_logit_softcap: float | None = None
    tied_embeddings: bool = True
    bos_token_id: int | None = None
    name: str = "custom"
    # architecture traits; None takes the family's (FAMILY_TRAITS)
    norm: str | None = None  # "layernorm" (centred, with bias) | "rmsnorm"
    norm_gain_offset: float | None = None  # Gemma stores norm gains as (gain - 1): gain = w + offset
    post_norms: bool | None = None  # norms after attention and after the MLP, before the residual add (Gemma)
    qk_norm: bool | None = None  # RMSNorm on each head's q and k (Gemma 3)
    biases: bool | None = None  # b_O and the MLP biases (GPT-2)
    qkv_bias: bool | None = None  # b_Q, b_K, b_V (GPT-2, Qwen2)
    gated_mlp: bool | None = None  # act(x W_gate) * (x W_in) instead of act(x W_in + b_in)
    act_fn: str | None = None  # "gelu_tanh" | "gelu" | "silu" | "solu_ln" (SoLU then a LayerNorm)
    embed_scale: bool | None = None  # embeddings times sqrt(d_model) (Gemma)
    learned_pos: bool | None = None  # learned absolute positions W_pos (GPT-2) instead of rotary
    parallel_attn_mlp: bool | None = None  # resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre))
    unembed_bias: bool | None = None  # logits = x W_U + b_U (TransformerLens-format checkpoints)
    attn_only: bool = False  # no MLP (TransformerLens's attn-only models): resid_post = resid_pre + attn_out
    # shortformer positions (TransformerLens's attn-only models): W_pos is added to ln1's output for the queries and
    # keys of every layer, never to the residual stream
    shortformer_pos: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; supported: {FAMILIES}")
        for trait in TRAITS:
            if getattr(self, trait) is None:
                setattr(self, trait, FAMILY_TRAITS[self.family].get(trait, False))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.attn_scale is None:
            self.attn_scale = self.d_head**-0.5

    @property
    def pos_in_residual(self) -> bool:
        """Whether the residual stream holds a learned position embedding (not rotary, not shortformer)."""
        return self.learned_pos and not self.shortformer_pos

    @property
    def d_attn(self) -> int:
        """Width of hook_z flattened over heads: n_heads * d_head."""
        return self.n_heads * self.d_head

    @property
    def group_size(self) -> int:
        """Query heads that share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head that query head `head` reads (same rule as HF's repeat_kv)."""
        return head // self.group_size

    def is_sliding(self, layer: int) -> bool:
        return bool(self.layer_types) and self.layer_types[layer] == "sliding_attention"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Processing:
    """How weights were transformed after loading. hook_z depends on it, so SAEs record it."""

    fold_value_biases: bool = False  # z -> z - b_V per head; b_O absorbs W_O b_V
    weights: str = "unknown"  # where the numbers came from, e.g. "gguf:Q4_1" or "hf:float32"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def activation_key(self) -> dict:
        """The parts that change activations; two models must agree on these to share an SAE."""
        return {"fold_value_biases": self.fold_value_biases, "weights": self.weights}
