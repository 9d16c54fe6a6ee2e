"""Matryoshka BatchTopK (Bussmann, Nabeshima, Karvonen and Nanda 2025, "Learning Multi-Level Features
with Matryoshka Sparse Autoencoders"; Nabeshima 2024, "Matryoshka Sparse Autoencoders"): BatchTopK
over the whole dictionary, but every nested prefix of the latents, of sizes m_1 < ... < m_M = d_sae,
must reconstruct the input on its own:

    loss = sum_m |x - (f[:, :m] W_dec[:m] + b_dec)|^2 + AuxK

so general features settle in the first latents and the later ones refine them, instead of
absorbing them. Saved as a JumpReLU SAE, as BatchTopK."""

from __future__ import annotations

from .batchtopk import BatchTopKRecipe


class MatryoshkaBatchTopKRecipe(BatchTopKRecipe):
    name = "matryoshka_batchtopk"
    options = (*BatchTopKRecipe.options, "prefixes")
    dense_f = True  # the prefixes' reconstructions read f

    def __init__(self, sae, cfg, data_parallel=False):
        super().__init__(sae, cfg, data_parallel)
        # the prefix sizes m_1 < ... < m_M = d_sae
        self.widths = tuple(sorted({max(1, round(a * sae.d_sae)) for a in cfg.prefixes} | {sae.d_sae}))

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        p = (0.0, *cfg.prefixes)
        if len(p) < 2 or any(a >= b for a, b in zip(p, p[1:])) or p[-1] > 1:
            raise ValueError(f"prefixes must be fractions of d_sae rising strictly within (0, 1], not {list(cfg.prefixes)}")

    def loss(self, x, step):
        out = super().loss(x, step)  # the whole dictionary (the outer prefix): its MSE and AuxK
        f, W_dec = out.feature_acts, self.sae.W_dec
        recon, start, inner = self.sae.b_dec, 0, 0.0
        for width in self.widths[:-1]:  # each prefix's reconstruction extends the previous one's
            recon = recon + f[:, start:width] @ W_dec[start:width]
            inner = inner + (x - recon).pow(2).sum(-1).mean()
            start = width
        return out._replace(loss=out.loss + inner)
