"""A DeepSeek-V3 style multi-token-prediction (MTP) draft head for the refserver target.

One MTP step at position t takes the target's hidden state h_t (pre-final-norm, as
`Transformer.forward` returns it) and the token x_{t+1}, and predicts x_{t+2}:

    x   = proj( concat( hidden_norm(h_t), embed_norm(embed(x_{t+1})) ) )      # 2d -> d
    g_t = Block(x) at position t, with the head's own one-layer KV cache
    logits = output( norm(g_t) )                                              # shared head

`embed` and `output` are the target's (tied) embedding and output head, shared and frozen; the
head owns only the two input norms, the projection, one transformer block and the final norm
(about 4.2M parameters for SmolLM2-135M).

Drafting s tokens runs the step s times. Step k (k >= 2) feeds back the previous step's output
hidden g and its own greedy token, at position t + k - 1. Every step writes its K/V into the
head's cache at its position, so:

- entries at positions <= t come from the target's hidden states (verified tokens);
- entries at t+1 .. t+s-1 are speculative. They are never cleaned up: attention reads only
  positions <= the query position, and the engine overwrites them with verified entries
  before any later query can read them (the same rule as the target's `KVCache`).

Keeping the head's cache in sync (the engine's job). After a verification step accepted tokens so
that the sequence is x_0..x_n (x_n the bonus token) and the target's hidden states h_0..h_{n-1}
are known, the head's cache must hold, for every position p <= n - 1, the entry computed from
(h_p, x_{p+1}). Entries for positions written by earlier `draft` calls' FIRST step are already
right; everything after it must be refreshed:

    head.fill(h[n_old:n-1], x[n_old+1:n], positions n_old .. n-2)   # verified, was speculative
    drafts = head.draft(h[n-1], x[n], n - 1, steps=s)                # step 1 writes position n-1

where n_old - 1 is the position the previous `draft` call started from (after prefill: run
`fill` over the whole prompt's positions 0 .. len-2, then `draft` from len-1). `fill` is one
batched call; rows with fewer accepted tokens may be padded by repeating their last valid
(hidden, token, position) triple, which rewrites the same entry with the same value.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from refserver.model import (
    BatchInfo,
    Block,
    KVCache,
    Linear,
    ModelConfig,
    RMSNorm,
    Transformer,
    rope_rotation,
    split_fused_weights,
)

log = logging.getLogger(__name__)

FORMAT = "specgate-mtp-v1"


class MTPHead(nn.Module):
    def __init__(self, cfg: ModelConfig, target: Transformer) -> None:
        super().__init__()
        self.config = cfg
        self.hidden_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.embed_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.proj = Linear(2 * cfg.dim, cfg.dim)
        self.block = Block(cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # Shared with the target and frozen. Kept in a tuple so that they are neither registered
        # as submodules (not saved, not trained, not moved by .to()) nor copied.
        self._shared: tuple[nn.Embedding, nn.Linear] = (target.tok_embeddings, target.output)
        # Optional draft vocabulary (see `set_draft_vocab`): token ids [N] and their rows of the
        # output head [N, d]. Plain attributes, not buffers: never saved, never trained.
        self._draft_ids: Tensor | None = None
        self._draft_weight: Linear | None = None

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def from_target(cls, target: Transformer, seed: int = 0) -> MTPHead:
        """A fresh, untrained head. The block starts as a copy of the target's last layer and the
        final norm as the target's final norm (a better start than random for a tiny head)."""
        cfg = target.config
        gen = torch.Generator().manual_seed(seed)
        head = cls(cfg, target)
        with torch.no_grad():
            head.block.load_state_dict(target.layers[-1].state_dict())
            head.norm.weight.copy_(target.norm.weight)
            head.proj.weight.copy_(torch.randn(head.proj.weight.shape, generator=gen) * 0.02)
        return head.placed_like(target)

    @classmethod
    def load(cls, path: str | Path, target: Transformer) -> MTPHead:
        """Load weights saved by `save`, on the target's device and in its dtype."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"MTP head weights {path} do not exist")
        cfg = target.config
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: metadata format={meta.get('format')!r}, expected {FORMAT!r}")
        if int(meta.get("dim", -1)) != cfg.dim or int(meta.get("vocab_size", -1)) != cfg.vocab_size:
            raise ValueError(
                f"{path}: head for dim={meta.get('dim')} vocab={meta.get('vocab_size')}, target has "
                f"dim={cfg.dim} vocab={cfg.vocab_size}"
            )
        head = cls(cfg, target)
        head.load_state_dict({k: v.float() for k, v in state.items()})
        return head.placed_like(target).eval().requires_grad_(False)

    def placed_like(self, target: Transformer, dtype: torch.dtype | None = None) -> MTPHead:
        """Move to the target's device, in `dtype` (default: the target's)."""
        param = target.tok_embeddings.weight
        return self.to(device=param.device, dtype=dtype or param.dtype)

    def save(self, path: str | Path, dtype: torch.dtype = torch.bfloat16) -> None:
        """Save the head's own weights (not the shared embedding/output) as safetensors."""
        from safetensors.torch import save_file

        state = split_fused_weights(self.state_dict(), self.config)  # the file keeps wq/wk/wv
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
        meta = {
            "format": FORMAT,
            "dim": str(self.config.dim),
            "vocab_size": str(self.config.vocab_size),
            "n_heads": str(self.config.n_heads),
            "n_kv_heads": str(self.config.n_kv_heads),
        }
        save_file(state, str(path), metadata=meta)

    def new_cache(self, max_slots: int, max_len: int) -> KVCache:
        """The head's own KV cache: one layer, same slot/position layout as the target's."""
        cfg, p = self.config, self.proj.weight
        return KVCache(1, max_slots, max_len, cfg.n_kv_heads, cfg.head_dim, p.dtype, p.device)

    def set_draft_vocab(self, token_ids: Tensor | None) -> None:
        """Let `draft` choose only among `token_ids` (e.g. the target's most frequent tokens);
        None restores the full vocabulary.

        Why: one draft step's own block is ~1/30 of a target forward, but the shared output head
        (vocab x d, 49152 x 576) costs as much as ~3 target layers; a draft only proposes, so
        an argmax over the few thousand tokens that make up nearly all of the target's answers
        keeps most of the acceptance at a fraction of the cost. Verification is unchanged.
        Call after the head is placed on its device and dtype.
        """
        if token_ids is None:
            self._draft_ids = self._draft_weight = None
            return
        weight = self._shared[1].weight
        ids = token_ids.to(device=weight.device, dtype=torch.long).flatten()
        V = weight.shape[0]
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= V:
            raise ValueError(f"draft vocab of {ids.numel()} token ids: need >= 1, each in [0, {V})")
        self._draft_ids = ids
        self._draft_weight = Linear.frozen(weight.detach()[ids].contiguous(), pack=False)

    @property
    def draft_vocab_size(self) -> int:
        """How many tokens `draft` chooses among."""
        ids = self._draft_ids
        return self.config.vocab_size if ids is None else ids.numel()

    # ---------------------------------------------------------------------------------- inference

    def embed(self, tokens: Tensor) -> Tensor:
        return self._shared[0](tokens)

    def logits(self, hidden_out: Tensor) -> Tensor:
        """Final norm + shared output head, float32 (argmax ties decided at full precision)."""
        return self._shared[1](self.norm(hidden_out)).float()

    def step_input(self, hidden: Tensor, next_tokens: Tensor) -> Tensor:
        """proj(concat(norm(h_t), norm(embed(x_{t+1})))): the block's input, [..., d]."""
        e = self.embed_norm(self.embed(next_tokens))
        h = self.hidden_norm(hidden).to(e.dtype)
        return self.proj(torch.cat([h, e], dim=-1))

    def fill(
        self,
        hidden: Tensor,
        next_tokens: Tensor,
        positions: Tensor,
        cache: KVCache,
        slots: Tensor,
        static_kv_len: int | None = None,
    ) -> Tensor:
        """Write verified entries (h_p, x_{p+1}) at `positions` into the head's cache.

        hidden [B, T, d], next_tokens [B, T], positions [B, T], slots [B]. Returns the block's
        output hidden [B, T, d] (no logits: a refresh does not need them). `static_kv_len`: no
        host sync, for a CUDA graph (see `BatchInfo.of`).
        """
        _check_shapes(hidden, next_tokens, positions, slots)
        x = self.step_input(hidden, next_tokens)
        # One host sync for the whole call (none with static_kv_len).
        batch = BatchInfo.of(positions, slots, self.config, x.dtype, static_kv_len)
        if batch.kv_len > cache.max_len:
            raise ValueError(f"position {batch.kv_len - 1} >= MTP cache max_len {cache.max_len}")
        return self.block(x, positions, cache.layer(0), slots, batch)

    def forward(
        self, hidden: Tensor, next_tokens: Tensor, positions: Tensor, cache: KVCache, slots: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One MTP step for every (row, t): returns (hidden_out [B, T, d], logits [B, T, V]).

        logits[b, t] predicts the token at positions[b, t] + 2. Writes the head's cache like `fill`.
        """
        out = self.fill(hidden, next_tokens, positions, cache, slots)
        return out, self.logits(out)

    @torch.no_grad()
    def draft(
        self,
        hidden_last: Tensor,
        next_token: Tensor,
        positions: Tensor,
        cache: KVCache,
        slots: Tensor,
        steps: int,
        return_logits: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Greedy chained drafts: tokens [B, steps] for positions + 2 .. positions + steps + 1.

        hidden_last [B, d] is the target's hidden state at `positions` [B] (the last verified
        token's position), next_token [B] the token after it (the bonus token). Step 1 writes
        the verified cache entry at `positions`; steps 2..s write speculative ones after it.
        With return_logits, also the float32 logits [B, steps, V] each draft was chosen from
        (over a draft vocabulary, see `set_draft_vocab`: -inf outside it).
        """
        if hidden_last.dim() != 2 or next_token.dim() != 1 or positions.dim() != 1:
            raise ValueError(
                f"draft wants hidden_last [B, d], next_token [B], positions [B]; got "
                f"{tuple(hidden_last.shape)}, {tuple(next_token.shape)}, {tuple(positions.shape)}"
            )
        first = self.fill(
            hidden_last[:, None], next_token[:, None], positions[:, None], cache, slots
        )
        return self.draft_from(first[:, 0], positions, cache, slots, steps, return_logits)

    @torch.no_grad()
    def draft_from(
        self,
        first_out: Tensor,
        positions: Tensor,
        cache: KVCache,
        slots: Tensor,
        steps: int,
        return_logits: bool = False,
        static_kv_len: int | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """`draft` when step 1's block output `first_out` [B, d] at `positions` [B] is already
        computed: the engine gets it from the same `fill` call that refreshes the verified
        entries before it (one block forward instead of two)."""
        if steps < 1:
            raise ValueError(f"steps={steps}: must be >= 1")
        h, pos = first_out[:, None], positions[:, None]
        tok, logits = self._choose(h, return_logits)
        tokens, all_logits = [tok], [logits]
        for _ in range(steps - 1):  # step k at position + k - 1 feeds back its own (h, token)
            pos = pos + 1
            h = self.fill(h, tok, pos, cache, slots, static_kv_len)
            tok, logits = self._choose(h, return_logits)
            tokens.append(tok)
            all_logits.append(logits)
        drafts = torch.cat(tokens, dim=1)
        return (drafts, torch.cat(all_logits, dim=1)) if return_logits else drafts

    def _choose(self, hidden_out: Tensor, full_logits: bool) -> tuple[Tensor, Tensor]:
        """(greedy draft tokens [B, 1], float32 logits) for block outputs [B, 1, d]. Over a draft
        vocabulary the logits are [B, 1, N] unless `full_logits` (then [B, 1, V], -inf outside)."""
        if self._draft_ids is None:
            logits = self.logits(hidden_out)
            return logits.argmax(-1), logits
        logits = self._draft_weight(self.norm(hidden_out)).float()  # [B, 1, N]
        tokens = self._draft_ids[logits.argmax(-1)]
        if full_logits:
            full = logits.new_full((*logits.shape[:-1], self.config.vocab_size), -torch.inf)
            logits = full.index_copy_(-1, self._draft_ids, logits)
        return tokens, logits

    # ----------------------------------------------------------------------------------- training

    def chained_forward(
        self,
        hidden: Tensor,
        tokens: Tensor,
        positions: Tensor,
        doc_ids: Tensor,
        steps: int,
    ) -> list[Tensor]:
        """Cache-free forward of `steps` chained MTP steps at every index, for training.

        hidden [R, L, d]: target hidden h_t; tokens [R, L]: x_t; positions [R, L]: t within its
        document; doc_ids [R, L]: which packed document each index belongs to (-1 for padding).
        Step k at index t consumes token x_{t+k} (the true token: on a greedy chain that the
        verifier accepts, the head's own token equals it) and, for k >= 2, step k-1's output at
        index t. It runs at position t + k - 1 and attends exactly to what the cached `draft`
        would see: step-1 entries of its document at indices <= t, plus steps 2..k's own
        entries at index t. Returns the output hidden [R, L, d] of each step; index t of step k
        predicts x_{t+k+1}. Indices whose x_{t+k} lies outside the document are garbage: mask
        them in the loss.
        """
        R, L = tokens.shape
        same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
        causal = torch.ones(L, L, dtype=torch.bool, device=tokens.device).tril()
        base_mask = same_doc & causal & (doc_ids[:, :, None] >= 0)
        eye = torch.eye(L, dtype=torch.bool, device=tokens.device).expand(R, L, L)
        # A padding query (doc -1) would have an all-False row: let it see itself to avoid NaNs.
        base_mask = base_mask | (eye & (doc_ids[:, :, None] < 0))

        outs: list[Tensor] = []
        base_kv: tuple[Tensor, Tensor] | None = None
        diag_k: list[Tensor] = []
        diag_v: list[Tensor] = []
        h = hidden
        attention = self.block.attention
        for k in range(1, steps + 1):
            x = self.step_input(h, _shift_left(tokens, k))
            rotation = rope_rotation(positions + (k - 1), self.config)
            q, kk, vv = attention.project(self.block.attention_norm(x), rotation)
            if base_kv is None:
                base_kv = (kk, vv)
                keys, values, mask = kk, vv, base_mask
            else:
                diag_k.append(kk)
                diag_v.append(vv)
                keys = torch.cat([base_kv[0], *diag_k], dim=1)
                values = torch.cat([base_kv[1], *diag_v], dim=1)
                mask = torch.cat([base_mask] + [eye] * len(diag_k), dim=2)
            h = self.block.mlp_residual(x + attention.attend(q, keys, values, mask[:, None]))
            outs.append(h)
        return outs


def _shift_left(tokens: Tensor, k: int) -> Tensor:
    """tokens[:, t + k] at index t; the last k indices repeat the final token (masked later)."""
    return torch.cat([tokens[:, k:], tokens[:, -1:].expand(-1, k)], dim=1)


def _check_shapes(hidden: Tensor, next_tokens: Tensor, positions: Tensor, slots: Tensor) -> None:
    B, T = next_tokens.shape
    if hidden.shape[:2] != (B, T) or positions.shape != (B, T) or slots.shape != (B,):
        raise ValueError(
            f"MTP head wants hidden [B, T, d], next_tokens [B, T], positions [B, T], slots [B]; "
            f"got {tuple(hidden.shape)}, {tuple(next_tokens.shape)}, {tuple(positions.shape)}, "
            f"{tuple(slots.shape)}"
        )


__all__ = ["FORMAT", "MTPHead"]
