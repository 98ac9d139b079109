"""Adaptor-T: memory retention on the selective scan's hidden states (docs/paper_digest.md §3.4).

After the scan (the recurrence is unchanged, so it stays parallel and may sample states ahead of
i), each direction's hidden-state sequence h (D x N per token) is augmented per token i:

    c      = softmax_K(phi_c(q_i))                (S heads x K points, sums to 1 over K)
    p      = i + phi_p(q_i)    (relative)  or  (L-1) * sigmoid(phi_p(q_i))  (absolute)
    m_i^s  = sum_k c_k^s * lerp(h^s, p_k^s)       (linear interpolation, zero outside [0, L-1])
    h~_i   = h_i + gamma * concat_s(m_i^s)

with q_i = h_i (flattened D*N, or its mean over N). The module returns the read-out of the extra
memory, C . (gamma * m), shape (B, 4*D, L), or, given y = C . h + D u, the sum (SS2D hook
contract). Static selection replaces phi_p by learned (S, K) offsets shared by all tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adaptor_peft.kernels.adaptor_t_torch import PAD_BEFORE, states_table
from adaptor_peft.kernels.dispatch import adaptor_t_readout, resolve_backend

from .config import MambaAdaptorConfig


class DirectionLinear(nn.Module):
    """A linear layer per scan direction (weight (G, out, in)); G = 1 shares it across directions."""

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(groups, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(groups, out_features))

    def extra_repr(self) -> str:
        """Shape summary for print(model)."""
        g, o, i = self.weight.shape
        return f"groups={g}, in_features={i}, out_features={o}"


def spread_offsets(heads: int, points: int, spread: float) -> torch.Tensor:
    """Initial relative offsets (S, K): head s, point k -> (-1)^(k+1) * (k//2 + 1) * (s + 1) * spread."""
    k = torch.arange(points, dtype=torch.float32)
    sign = torch.where(k % 2 == 0, -1.0, 1.0)
    s = torch.arange(heads, dtype=torch.float32)[:, None]
    return sign * (torch.div(k, 2, rounding_mode="floor") + 1) * (s + 1) * spread


def spread_fractions_logit(heads: int, points: int) -> torch.Tensor:
    """Initial absolute-mode logits (S, K): positions evenly spread over the sequence, heads interleaved."""
    j = torch.arange(points)[None, :] * heads + torch.arange(heads)[:, None]
    frac = (j.float() + 0.5) / (heads * points)
    return torch.log(frac) - torch.log1p(-frac)


class AdaptorT(nn.Module):
    """Adaptor-T for one SS2D block; forward(hs, Cs, H, W) -> read-out correction (B, 4*D, L)."""

    def __init__(
        self, d_inner: int, d_state: int, config: MambaAdaptorConfig, num_directions: int = 4
    ) -> None:
        super().__init__()
        if d_inner % config.num_heads:
            raise ValueError(
                f"MambaAdaptorConfig.num_heads={config.num_heads} does not divide d_inner={d_inner}"
            )
        self.d_inner, self.d_state, self.num_directions = d_inner, d_state, num_directions
        self.heads, self.points = config.num_heads, config.num_points
        self.relative = config.offset_mode == "relative"
        self.dynamic = config.selection == "dynamic"
        self.phi_input = config.phi_input
        self.spread = float(config.offset_init_spread)
        self.init = config.init
        groups = 1 if config.share_across_directions else num_directions
        in_features = d_inner * d_state if config.phi_input == "state" else d_inner
        sk = self.heads * self.points
        if self.dynamic:
            self.phi_p = DirectionLinear(groups, in_features, sk)
        else:
            self.static_offsets = nn.Parameter(torch.zeros(groups, self.heads, self.points))
        self.phi_c = DirectionLinear(groups, in_features, sk)
        self.gamma = nn.Parameter(torch.zeros(groups, d_inner))
        self.reset_parameters()

    def _initial_offsets(self) -> torch.Tensor:
        if self.relative:
            return spread_offsets(self.heads, self.points, self.spread)
        return spread_fractions_logit(self.heads, self.points)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Set the init the config names: identity, random_phi (gamma = 0, random phi) or random.

        - identity: gamma = 0, phi_p/phi_c weights 0 (spread offsets in phi_p's bias, uniform c).
        - random_phi: gamma = 0, phi_p/phi_c weights U(-1/sqrt(in), 1/sqrt(in)) (peft's LoRA A
          init), biases as for identity. Still the exact identity (C . (0 * m) = 0), like LoRA
          with B = 0. As in LoRA (whose A gets no gradient while B = 0), phi gets exactly zero
          gradient on the first backward (d out / d phi = C . (gamma * dm/dphi) = 0) and a
          non-zero one from the second, once gamma has moved; gamma's own first gradient is
          C . m, not 0. With zero phi weights (identity) the predictors are constant until then.
        - random: gamma = 1, random phi (normal, std 1/sqrt(in)), static offsets jittered.

        No identity init within the paper's form (h~_i = h_i + gamma * sum_k c_k h_{p_k}, c a
        softmax) gives phi_c a first-step gradient: per channel either gamma_d = 0 (then every
        phi gradient through that channel is 0), or m_d must vanish for every input, which (m
        being a convex combination of interpolated states, other positions free) needs every
        sampling weight to be 0, so dm/dc = the samples = 0 as well. Only a subtracted frozen
        copy of m (not in the paper) would do it.
        """
        init = self._initial_offsets()
        if self.dynamic:
            self.phi_p.weight.zero_()
            self.phi_p.bias.copy_(init.reshape(1, -1).expand_as(self.phi_p.bias))
        else:
            self.static_offsets.copy_(init.expand_as(self.static_offsets))
        self.phi_c.weight.zero_()
        self.phi_c.bias.zero_()
        self.gamma.zero_()
        fan_in = self.phi_c.weight.shape[-1]
        if self.init == "random_phi":
            bound = 1.0 / math.sqrt(fan_in)
            for phi in (self.phi_p, self.phi_c) if self.dynamic else (self.phi_c,):
                nn.init.uniform_(phi.weight, -bound, bound)
        elif self.init == "random":
            std = 1.0 / math.sqrt(fan_in)
            if self.dynamic:
                nn.init.normal_(self.phi_p.weight, std=std)
            else:
                self.static_offsets.add_(torch.randn_like(self.static_offsets) * 0.5)
            nn.init.normal_(self.phi_c.weight, std=std)
            self.gamma.fill_(1.0)

    def extra_repr(self) -> str:
        """Config summary for print(model)."""
        return (
            f"d_inner={self.d_inner}, d_state={self.d_state}, heads={self.heads}, points={self.points}, "
            f"offsets={'relative' if self.relative else 'absolute'}, "
            f"selection={'dynamic' if self.dynamic else 'static'}"
        )

    def forward(
        self, hs: torch.Tensor, Cs: torch.Tensor, H: int, W: int, ys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hs (B, G*D, N, L) scan states, Cs (B, G, N, L) -> C . (gamma * m), shape (B, G*D, L).

        With ys (the scan output, (B, G*D, L)) it returns ys + C . (gamma * m) instead, accumulated
        into ys's memory where no gradient is needed (the SS2D hook passes it: saves a full pass).
        """
        batch, channels, n, length = hs.shape
        groups = Cs.shape[1]
        if channels != groups * self.d_inner or n != self.d_state or length != H * W:
            raise ValueError(
                f"AdaptorT(d_inner={self.d_inner}, d_state={self.d_state}) got states {tuple(hs.shape)} "
                f"and C {tuple(Cs.shape)} for a {H}x{W} grid"
            )
        # The read-out kernel comes from dispatch like the scan's; the predictors are laid out for it:
        # channel-major GEMMs feed the Triton kernel, one token-major table serves the CPU path.
        backend = resolve_backend(None, hs)
        if backend == "triton":
            return self._forward_channel_major(hs, Cs, ys, backend)
        return self._forward_token_major(hs, Cs, ys, backend)

    def _predictor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (G or 1, parts*S*K, in), bias (G or 1, parts*S*K)): phi_p rows then phi_c rows."""
        if self.dynamic:  # one GEMM for both predictors
            weight = torch.cat([self.phi_p.weight, self.phi_c.weight], dim=1)
            bias = torch.cat([self.phi_p.bias, self.phi_c.bias], dim=1)
        else:
            weight, bias = self.phi_c.weight, self.phi_c.bias
        return weight, bias

    def _offsets(self, raw: torch.Tensor | None, like: torch.Tensor, length: int) -> torch.Tensor:
        """Sampling offsets (B, L, G, S, K) from the phi_p outputs (or the static offsets)."""
        if raw is None:
            batch, _, groups = like.shape[:3]
            raw = (
                self.static_offsets.to(like.dtype)
                .expand(groups, self.heads, self.points)
                .expand(batch, length, -1, -1, -1)
            )
        return raw if self.relative else torch.sigmoid(raw) * (length - 1)

    def _forward_channel_major(
        self, hs: torch.Tensor, Cs: torch.Tensor, ys: torch.Tensor | None, backend: str
    ) -> torch.Tensor:
        """GPU path: predictors as one batched GEMM on the channel-major states, one fused read-out kernel."""
        batch, channels, n, length = hs.shape
        groups = Cs.shape[1]
        heads, points, d_inner = self.heads, self.points, self.d_inner
        acc = torch.float64 if hs.dtype == torch.float64 else torch.float32
        q = hs.reshape(batch, groups, d_inner * n, length)  # a view of the Triton scan's states
        if self.phi_input == "state_mean":
            q = q.view(batch, groups, d_inner, n, length).mean(3)
        weight, bias = self._predictor()
        # (B, G, parts*S*K, L): every direction's predictor applied to its own channels, no transpose
        pred = (torch.matmul(weight.to(q.dtype), q) + bias.to(q.dtype)[..., None]).to(acc)
        pred = pred.view(batch, groups, -1, heads, points, length)
        coeffs = torch.softmax(pred[:, :, -1], dim=3).permute(0, 4, 1, 2, 3)  # (B, L, G, S, K) view
        raw = pred[:, :, 0].permute(0, 4, 1, 2, 3) if self.dynamic else None
        offsets = self._offsets(raw, coeffs, length)
        gamma = self.gamma.to(acc).expand(groups, d_inner).reshape(-1)
        return adaptor_t_readout(hs, offsets, coeffs, Cs, gamma, self.relative, add_to=ys, backend=backend)

    def _forward_token_major(
        self, hs: torch.Tensor, Cs: torch.Tensor, ys: torch.Tensor | None, backend: str
    ) -> torch.Tensor:
        """CPU path: predictors and the embedding_bag read-out on one channel-last table of the states."""
        batch, channels, n, length = hs.shape
        groups = Cs.shape[1]
        heads, points, d_inner = self.heads, self.points, self.d_inner
        # One channel-last copy of the states serves both the predictors (a plain GEMM over tokens)
        # and the gather (rows of D/S contiguous features).
        table = states_table(hs)  # (B, L, G*D*N); a view of the scan's token-major states
        rows = table.shape[1]
        q = table.view(batch * rows, groups, d_inner * n)
        if self.phi_input == "state_mean":
            q = q.view(batch * rows, groups, d_inner, n).mean(-1)
        weight, bias = self._predictor()
        # Predictor rows reordered point-major (row s*K + k -> k*S + s) and the GEMM written
        # transposed, (rows, tokens): the softmax over K then runs on the outermost axis (far faster
        # than over a size-K innermost one) and every later elementwise step is contiguous.
        parts = weight.shape[1] // (heads * points)
        weight = weight.view(-1, parts, heads, points, weight.shape[-1]).transpose(2, 3)
        weight = weight.reshape(-1, parts * points * heads, weight.shape[-1]).to(q.dtype)
        bias = bias.view(-1, parts, heads, points).transpose(2, 3).reshape(-1, parts * points * heads)
        bias = bias.to(q.dtype)
        if weight.shape[0] == 1:  # shared across directions
            pred = torch.addmm(bias[0, :, None], weight[0], q.reshape(-1, q.shape[-1]).t())
        else:
            pred = torch.stack(
                [torch.addmm(bias[g, :, None], weight[g], q[:, g].t()) for g in range(groups)], -1
            )
        pred = pred.to(q.dtype).view(parts, points, heads, batch, rows, groups)  # fp32 under autocast too
        tokens = slice(PAD_BEFORE, PAD_BEFORE + length)
        coeffs = torch.softmax(pred[-1], dim=0)[:, :, :, tokens].permute(2, 3, 4, 1, 0)  # (B, L, G, S, K)
        raw = pred[0][:, :, :, tokens].permute(2, 3, 4, 1, 0) if self.dynamic else None
        offsets = self._offsets(raw, coeffs, length)
        gamma = self.gamma.to(q.dtype).expand(groups, d_inner).reshape(-1)
        C = Cs.to(q.dtype)
        return adaptor_t_readout(
            hs, offsets, coeffs, C, gamma, self.relative, add_to=ys, table=table, backend=backend
        )
