"""The token-level sampler: MaskGIT, ROAR and autoregressive decoding of a 4M model, with guidance and chains.

It works on a :mod:`open4m.batch` ModDict *state* that holds every condition (as inputs) and every
target, initialised by :mod:`open4m.generation.prompt`:

- image target: ``tensor`` (B, N) ids, ``input_mask`` False where a token is known (given or already
  decoded), ``target_mask`` False where a token is still to generate;
- sequence target: the known ids with their sentinels as inputs at ``[0, len_in)`` and, as targets,
  the start token ``[S_1]`` then ``[PAD]`` up to the final sentinel ``[S_{k+1}]`` (the official layout).

Semantics follow the official sampler (OFFICIAL-4M-SPEC §5.3):

- **MaskGIT**: the full encoder on the current inputs, the decoder on every still-masked position of the
  target, the ``k`` most confident samples (probability of the sampled token) are written and become inputs.
- **ROAR**: ``k`` random still-masked positions are decoded and written.
- **Autoregressive**: the encoder once; decoding starts from the first target token and stops at the final
  sentinel (per row); the predicted spans are merged into the input with
  :meth:`open4m.text.TextTokenizer.merge_span_masking` (its ``merge_spans``, which carries each token's score
  along), and the sequence becomes an input. The decoder's self-attention keys/values and the cross-attention
  keys/values of the context are cached (``use_cache=False`` re-runs the decoder over the whole prefix each
  token, as the official code does).
  :attr:`Sampler.token_scores` keeps the probability of every generated token (under the distribution it
  was drawn from, guidance included), aligned with the merged sequence; given tokens score None.
- **Guidance**: ``l = l_u + sum_i w_i (l_i - l_u)``. ``l_u`` comes from the state with every guided condition
  emptied (image: no inputs; sequence: ``[S_1]`` only; embeddings: one zero vector), ``l_i`` from the state
  with only guided condition group ``i`` kept. Plain classifier-free guidance is one group holding all the
  guided conditions. All branches run as one batch.
- **View ensembles** (autoregressive targets, ``TargetSpec.views``): the batch holds ``views`` blocks of rows,
  each a view of the same prompts (e.g. the image moved by a few pixels, :mod:`open4m.generation.describe`);
  every step draws one token per prompt from the mean of the views' log-probabilities (after guidance) and
  writes it to every view.
- **Chains**: targets are generated in order and each finished target is an input of the next (in every
  guidance branch; list it in ``guided`` or the weights to guide on it, the official ``cfg_grow_conditioning``).

Fixes over the official code (spec §9.10): sentinel ids come from the tokenizer; rows stop at their own
final sentinel; per-row generators instead of global seeding; rows may have different numbers of tokens to
generate (in-painting masks); a chained sequence ends in ``[EOS]`` like a given one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from open4m import modalities
from open4m.batch import ModDict, attention_codes
from open4m.generation import schedules
from open4m.generation.sampling import ZERO_TEMPERATURE, make_generators, random_order, sample
from open4m.model.fourm import DecoderInput, EncoderInput, FourM


@dataclass
class TargetSpec:
    """How to generate one target modality.

    Attributes:
        name: the modality, e.g. ``"tok_depth@224"`` or ``"caption"``.
        scheme: ``maskgit`` / ``roar`` (image tokens) or ``autoregressive`` (sequences); None = the default.
        steps: decoding steps for MaskGIT / ROAR.
        token_schedule: ``cosine`` or ``linear`` (MaskGIT; ROAR is always linear).
        temperature, temperature_schedule: start temperature and ``constant`` / ``linear`` / ``onex:MIN:POW``.
        guidance: a classifier-free guidance scale (1 = none), or ``{condition: weight}`` for
            multi-condition guidance (weights may be negative).
        guided: conditions emptied for plain guidance (None = every condition present).
        max_new_tokens: autoregressive length limit (None = the modality's ``max_tokens``).
        vocab_size: sample image tokens only below this id (the image tokenizer's vocabulary when it is
            smaller than the modality's, e.g. an FSQ codebook of 1000 in a 1024-id modality); None = all.
        views: autoregressive targets only: the batch is ``views`` blocks of equally many rows, block ``v``
            holding view ``v`` of every prompt (row ``v * B + i``: view ``v`` of prompt ``i``, e.g. the image
            shifted by a few pixels, :mod:`open4m.generation.views`); each token is drawn once per prompt from
            the mean of its views' log-probabilities (an ensemble) and written to every view. 1 = no ensemble.
        forced: autoregressive targets only: per row of the batch (every view's row, with ``views``), token ids
            the decoder writes first, whatever it predicts, before it continues on its own (a forced opening of
            the sequence, e.g. a caption's first sentence); an empty list leaves a row free. None = no row forced.
        banned: autoregressive targets only: a callable ``banned(i, ids)`` asked before each step for prompt ``i``
            (row ``i``, or with ``views`` the rows ``v * B + i`` of all its views) with the ids it has written
            so far (after the start token); it returns the token ids that may not come next (an empty sequence
            bans none). Banned ids are never drawn; forced ids are written regardless. Used to keep a caption's
            shapes consistent with the model's own boxes (:mod:`open4m.generation.caption_shapes`).
    """

    name: str
    scheme: str | None = None
    steps: int = 8
    token_schedule: str = "cosine"
    temperature: float = 1.0
    temperature_schedule: str = "constant"
    guidance: float | dict[str, float] = 1.0
    guided: Sequence[str] | None = None
    max_new_tokens: int | None = None
    vocab_size: int | None = None
    views: int = 1
    forced: Sequence[Sequence[int]] | None = None
    banned: Callable[[int, list[int]], Sequence[int]] | None = None

    def resolved_scheme(self) -> str:
        if self.scheme is not None:
            return self.scheme
        return "autoregressive" if modalities.get(self.name).kind == "sequence" else "maskgit"


@dataclass
class StepInfo:
    """Reported to ``on_step`` after every decoding step: the target, the step index and the positions
    written, (B, N) bool for images (None for autoregressive targets, reported once when finished)."""

    target: str
    step: int
    written: torch.Tensor | None


class Sampler:
    """Generate targets from a 4M model. ``text_tokenizer`` is needed for sequence targets and guidance
    with sequence conditions (sentinel ids)."""

    def __init__(self, model: FourM, text_tokenizer=None, use_cache: bool = True) -> None:
        self.model = model
        self.text_tokenizer = text_tokenizer
        self.use_cache = use_cache
        # Filled by generate() for autoregressive targets: name -> per row, one entry per id of the merged
        # sequence (its non-input positions, final [EOS] included): the probability the generated token had
        # when it was drawn, None for given tokens and the appended [EOS].
        self.token_scores: dict[str, list[list[float | None]]] = {}

    # ------------------------------------------------------------------ checks
    def check(self, state: ModDict, targets: Sequence[TargetSpec]) -> None:
        """Raise a ValueError naming the problem for anything that cannot be generated; runs no model code."""
        model = self.model
        names = {spec.name for spec in targets}
        for name in state:
            if name not in names and name not in model.encoder_embeddings:
                raise ValueError(
                    f"the model cannot take {name!r} as input; its inputs: {sorted(model.encoder_embeddings)}"
                )
        seen = set()
        for spec in targets:
            name = spec.name
            if name not in model.decoder_embeddings:
                raise ValueError(
                    f"the model cannot generate {name!r}; it generates: {sorted(model.decoder_embeddings)}"
                )
            if name in seen:
                raise ValueError(f"target {name!r} is listed twice")
            seen.add(name)
            if name not in state:
                raise ValueError(f"target {name!r} has no initialised entry in the state")
            kind = modalities.get(name).kind
            scheme = spec.resolved_scheme()
            if scheme not in schedules.SCHEMES:
                raise ValueError(f"target {name!r}: scheme must be one of {schedules.SCHEMES}, got {scheme!r}")
            if (scheme == "autoregressive") != (kind == "sequence"):
                raise ValueError(f"target {name!r} ({kind}) cannot be decoded with {scheme!r}")
            if kind == "sequence" and self.text_tokenizer is None:
                raise ValueError(f"target {name!r}: sequence targets need a text tokenizer (sentinel ids)")
            remaining = (~state[name]["target_mask"]).sum(dim=1)
            if scheme != "autoregressive":
                if spec.views != 1:
                    raise ValueError(f"target {name!r}: views (an ensemble over views of the prompt) is for "
                                     f"autoregressive targets only, got views={spec.views!r} with {scheme!r}")
                if spec.forced is not None or spec.banned is not None:
                    raise ValueError(f"target {name!r}: forced (tokens written first) and banned (tokens never "
                                     f"written) are for autoregressive targets only, not {scheme!r}")
                schedules.temperature_schedule(spec.temperature_schedule, spec.temperature, [1])
                for n in remaining.unique().tolist():
                    if n > 0:
                        schedules.token_schedule(self._token_schedule_name(spec), spec.steps, n)
            else:
                rows = int(remaining.shape[0])
                if not isinstance(spec.views, int) or spec.views < 1 or rows % spec.views:
                    raise ValueError(f"target {name!r}: views must be a whole number >= 1 that divides the batch "
                                     f"({rows} rows), got {spec.views!r}")
                limit = modalities.get(name).max_tokens
                if spec.max_new_tokens is not None and not 0 < spec.max_new_tokens <= limit:
                    raise ValueError(
                        f"target {name!r}: max_new_tokens must lie in [1, {limit}], got {spec.max_new_tokens}"
                    )
            self._guidance_groups(spec, state, names)

    def _token_schedule_name(self, spec: TargetSpec) -> str:
        return "linear" if spec.resolved_scheme() == "roar" else spec.token_schedule

    def _guidance_groups(self, spec: TargetSpec, state: ModDict, targets: set) -> tuple[list[list[str]], list[float]]:
        """Which conditions each guidance branch keeps and its weight; ([], []) = no guidance."""
        conditions = [n for n in state if n not in targets]
        if isinstance(spec.guidance, dict):
            unknown = [c for c in spec.guidance if c not in state or c == spec.name]
            if unknown:
                raise ValueError(f"target {spec.name!r}: guidance weights for {unknown}, which are not conditions")
            names = list(spec.guidance)
            return [[c] for c in names], [float(spec.guidance[c]) for c in names]
        scale = float(spec.guidance)
        guided = list(spec.guided) if spec.guided is not None else conditions
        bad = [c for c in guided if c not in state or c == spec.name]
        if bad:
            raise ValueError(f"target {spec.name!r}: guided conditions {bad} are not conditions of this prompt")
        if scale == 1.0 or not guided:
            return [], []
        return [guided], [scale]

    # ------------------------------------------------------------------ entry point
    @torch.no_grad()
    def generate(
        self,
        state: ModDict,
        targets: Sequence[TargetSpec],
        seed: int | Sequence[int] | None = None,
        top_k: int | float = 0,
        top_p: float = 0.0,
        on_step: Callable[[StepInfo], None] | None = None,
    ) -> ModDict:
        """Generate ``targets`` in order; returns the final state (every target fully given as input)."""
        self.check(state, targets)
        self.token_scores = {}
        state = {name: {k: v.clone() for k, v in d.items()} for name, d in state.items()}
        batch_size = next(iter(state.values()))["input_mask"].shape[0]
        generators = make_generators(seed, batch_size, next(iter(state.values()))["input_mask"].device)
        names = {spec.name for spec in targets}
        for spec in targets:
            groups, weights = self._guidance_groups(spec, state, names)
            if spec.resolved_scheme() == "autoregressive":
                state = self._autoregressive(state, spec, groups, weights, generators, top_k, top_p)
                if on_step:
                    on_step(StepInfo(spec.name, 0, None))
            else:
                state = self._iterative(state, spec, groups, weights, generators, top_k, top_p, on_step)
        return state

    # ------------------------------------------------------------------ branches and forward passes
    def _branches(self, state: ModDict, groups: list[list[str]]) -> ModDict:
        """The state stacked with its guidance branches: rows [cond_1; ...; cond_G; uncond] (or the state alone)."""
        if not groups:
            return state
        guided = {c for g in groups for c in g}
        branches = [self._emptied(state, guided - set(g)) for g in groups] + [self._emptied(state, guided)]
        return {n: {k: torch.cat([b[n][k] for b in branches]) for k in state[n]} for n in state}

    def _emptied(self, state: ModDict, names: set) -> ModDict:
        out = dict(state)
        for name in names:
            d = {k: v.clone() for k, v in state[name].items()}
            kind = modalities.get(name).kind
            if kind in ("image_tokens", "pixels"):
                d["input_mask"][:] = True
            else:
                if kind == "sequence":
                    if self.text_tokenizer is None:
                        raise ValueError(f"guidance on the sequence condition {name!r} needs a text tokenizer")
                    d["tensor"][:] = 0
                    d["tensor"][:, 0] = self.text_tokenizer.sentinel_id(1)
                else:
                    d["tensor"] = torch.zeros_like(d["tensor"])
                d["input_mask"][:] = True
                d["input_mask"][:, 0] = False
            out[name] = d
        return out

    def _encode(self, batch: ModDict) -> tuple[EncoderInput, torch.Tensor]:
        model = self.model
        inputs = {n: d for n, d in batch.items() if n in model.encoder_embeddings}
        n_enc = max(1, int(torch.cat([~d["input_mask"] for d in inputs.values()], dim=1).sum(dim=1).max()))
        enc = model.embed_encoder(inputs, n_enc)
        return enc, model.context(model.encode(enc), enc)

    @staticmethod
    def _combine(logits: torch.Tensor, weights: list[float], batch_size: int) -> torch.Tensor:
        """(G+1)B rows of logits → B rows: ``l_u + sum_i w_i (l_i - l_u)`` (or the rows as they are)."""
        if not weights:
            return logits
        parts = logits.float().split(batch_size)
        uncond = parts[-1]
        return uncond + sum(w * (p - uncond) for w, p in zip(weights, parts[:-1], strict=True))

    # ------------------------------------------------------------------ MaskGIT / ROAR
    def _iterative(self, state, spec, groups, weights, generators, top_k, top_p, on_step) -> ModDict:
        name = spec.name
        scheme = spec.resolved_scheme()
        entry = state[name]
        b = entry["target_mask"].shape[0]
        entry["tensor"] = entry["tensor"].reshape(b, -1).long()
        remaining = (~entry["target_mask"]).sum(dim=1)
        longest = int(remaining.max())
        if longest == 0:
            return state
        sched_name = self._token_schedule_name(spec)
        per_row = torch.tensor(
            [schedules.token_schedule(sched_name, spec.steps, int(n)) if n > 0 else [0] * spec.steps for n in remaining]
        )  # (B, steps)
        temps = schedules.temperature_schedule(
            spec.temperature_schedule, spec.temperature, schedules.token_schedule(sched_name, spec.steps, longest)
        )
        for step in range(spec.steps):
            k = per_row[:, step].to(entry["tensor"].device)
            open_ = ~entry["target_mask"]
            if scheme == "roar":
                priority = random_order(open_, generators)
                ranks = priority.argsort(dim=1).argsort(dim=1)
                decode = open_ & (ranks < k[:, None])
            else:
                decode = open_
            tokens, conf, positions, valid = self._decode_positions(state, name, decode, groups, weights, temps[step],
                                                                    generators, top_k, top_p, spec.vocab_size)
            if scheme == "roar":
                chosen = valid
            else:
                order = conf.masked_fill(~valid, float("-inf")).argsort(dim=1, descending=True, stable=True)
                chosen = valid & (order.argsort(dim=1) < k[:, None])
            written = torch.zeros_like(open_)
            written.scatter_(1, positions, chosen)
            kept = entry["tensor"].gather(1, positions)
            entry["tensor"] = entry["tensor"].scatter(1, positions, torch.where(chosen, tokens, kept))
            entry["input_mask"] = entry["input_mask"] & ~written
            entry["target_mask"] = entry["target_mask"] | written
            if on_step:
                on_step(StepInfo(name, step, written))
        return state

    def _decode_positions(self, state, name, decode, groups, weights, temperature, generators, top_k, top_p,
                          vocab_size=None):
        """Decode the positions ``decode`` (B, N) of image target ``name``.

        Returns tokens, confidence, positions (B, m) and valid (B, m): slot j of row i holds position
        ``positions[i, j]`` when ``valid[i, j]``.
        """
        model = self.model
        b = decode.shape[0]
        m = int(decode.sum(dim=1).max())
        step_state = dict(state)
        step_state[name] = dict(state[name], target_mask=~decode,
                                decoder_attention_mask=attention_codes(decode.cpu(), "image_tokens").to(decode.device))
        batch = self._branches(step_state, groups)
        enc, context = self._encode(batch)
        dec = model.embed_decoder({name: batch[name]}, m)
        y = model.decode(dec, context, enc)
        logits = self._combine(model.logits(y, name), weights, b)
        if vocab_size is not None:
            logits[..., vocab_size:] = float("-inf")
        positions = torch.sort((~decode).to(torch.uint8), dim=1, stable=True).indices[:, :m]
        valid = decode.gather(1, positions)
        tokens, conf = sample(logits, temperature, generators, top_k, top_p)
        return tokens, conf, positions, valid

    # ------------------------------------------------------------------ autoregressive
    def _autoregressive(self, state, spec, groups, weights, generators, top_k, top_p) -> ModDict:
        model = self.model
        name = spec.name
        mod = modalities.get(name)
        entry = state[name]
        b = entry["tensor"].shape[0]
        target_rows = [(~entry["target_mask"][i]).nonzero().squeeze(1) for i in range(b)]
        if any(t.numel() < 2 for t in target_rows):
            raise ValueError(f"target {name!r}: every row needs a start token and a final sentinel as targets")
        start = torch.stack([entry["tensor"][i, t[0]] for i, t in enumerate(target_rows)]).long()
        stop = torch.stack([entry["tensor"][i, t[-1]] for i, t in enumerate(target_rows)]).long()
        limit = spec.max_new_tokens or mod.max_tokens
        batch = self._branches(state, groups)
        rows = batch[name]["tensor"].shape[0]
        enc, context = self._encode(batch)
        emb = model.decoder_embeddings[name]
        pos = torch.arange(limit, device=start.device)
        pos_emb = emb.pos_mod(pos.masked_fill(pos >= mod.pos_max_length, 0)).to(context.dtype)  # (limit, D)
        out = start[:, None]
        probs = [torch.full((b, 1), float("nan"))]  # cat(probs)[:, t]: the probability out[:, t] was drawn with
        done = torch.zeros(b, dtype=torch.bool, device=start.device)
        decoder = model.incremental_decoder(context, enc, limit) if self.use_cache else None
        # cached, unguided temperature-0 steps of one view: the decoder's argmax of one branch's logits
        greedy = (decoder is not None and abs(spec.temperature) < ZERO_TEMPERATURE and not weights and spec.views == 1
                  and spec.banned is None)
        forced = _forced_rows(spec, b)
        for t in range(limit):
            if decoder is not None:
                x = (emb.token_emb(out[:, -1:]).to(context.dtype) + pos_emb[t]).repeat(rows // b, 1, 1)
                y = decoder.step(x)
                if greedy:
                    new, prob = (v[:, None] for v in decoder.greedy(y, name))
                else:
                    logits = decoder.logits(y, name)
            else:
                logits = model.logits(self._decode_prefix(out, emb, pos_emb, context, enc, rows // b), name)
            if not greedy:
                logits = self._combine(logits[:, None], weights, b)
                if spec.banned is not None:
                    logits = _ban(logits, spec, out[:, 1:])
                if spec.views > 1:
                    new, prob = self._ensemble_sample(logits, spec, generators, top_k, top_p)
                else:
                    new, prob = sample(logits, spec.temperature, generators, top_k, top_p)
            if forced is not None:
                new, prob = _force(new, prob, forced, t)
            out = torch.cat([out, new], dim=1)
            probs.append(prob)
            done |= new[:, 0] == stop
            if bool(done.all()):
                break
        probs = torch.cat([p.float().cpu() for p in probs], dim=1)
        state[name], self.token_scores[name] = self._merged(entry, out, probs, stop, name)
        return state

    @staticmethod
    def _ensemble_sample(logits, spec: TargetSpec, generators, top_k, top_p) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (V*B, 1, vocab) of ``spec.views`` blocks: one token per prompt drawn (with the generators of the
        first block) from the blocks' mean log-probabilities, repeated to every block; (V*B, 1) tokens and
        probabilities."""
        views = spec.views
        log_probs = logits.float().log_softmax(dim=-1)
        mean = log_probs.reshape(views, log_probs.shape[0] // views, *log_probs.shape[1:]).mean(dim=0)
        new, prob = sample(mean, spec.temperature, generators[: mean.shape[0]], top_k, top_p)
        return new.repeat(views, 1), prob.repeat(views, 1)

    def _decode_prefix(self, out, emb, pos_emb, context, enc, repeat) -> torch.Tensor:
        """Uncached step: the decoder over the whole prefix (B, t) under a causal mask; the last outputs (R, D)."""
        t = out.shape[1]
        tokens = emb.token_emb(out).to(context.dtype).repeat(repeat, 1, 1)
        r = tokens.shape[0]
        causal = torch.ones(t, t, dtype=torch.bool, device=out.device).triu(1).expand(r, t, t)
        zeros = torch.zeros(r, t, dtype=torch.bool, device=out.device)
        dec = DecoderInput(tokens, pos_emb[:t].expand(r, t, -1), zeros, zeros.short(), zeros.long(), causal)
        return self.model.decode(dec, context, enc)[:, -1]

    def _merged(self, entry: dict, out: torch.Tensor, probs: torch.Tensor, stop: torch.Tensor,
                name: str) -> tuple[dict, list[list[float | None]]]:
        """Merge each row's predicted spans into its input; the whole sequence becomes an input. Also returns
        each row's token scores, aligned with the merged ids (see :attr:`token_scores`)."""
        tok = self.text_tokenizer
        limit = modalities.get(name).max_tokens + 1
        tensor = torch.zeros_like(entry["tensor"])
        input_mask = torch.ones_like(entry["input_mask"])
        scores = []
        for i in range(out.shape[0]):
            ids = out[i].tolist()
            if int(stop[i]) in ids[1:]:
                ids = ids[: ids.index(int(stop[i]), 1) + 1]
            given = entry["tensor"][i][~entry["input_mask"][i]].tolist()
            merged, row_scores = tok.merge_spans(given, ids, probs[i, : len(ids)].tolist())
            merged = (merged + [tok.eos_id])[:limit]
            scores.append((row_scores + [None])[:limit])
            tensor[i, : len(merged)] = torch.tensor(merged, dtype=tensor.dtype)
            input_mask[i, : len(merged)] = False
        entry = {
            "tensor": tensor,
            "input_mask": input_mask,
            "target_mask": torch.ones_like(input_mask),
            "decoder_attention_mask": torch.zeros(tensor.shape, dtype=torch.int32, device=tensor.device),
        }
        return entry, scores


def _forced_rows(spec: TargetSpec, rows: int) -> list[list[int]] | None:
    """``spec.forced`` checked against the batch: one id list per row, or None when nothing is forced."""
    if spec.forced is None:
        return None
    forced = [[int(i) for i in row] for row in spec.forced]
    if len(forced) != rows:
        raise ValueError(f"target {spec.name!r}: forced has {len(forced)} rows, the batch has {rows} (with "
                         f"views, one per view of every prompt)")
    vocab = modalities.get(spec.name).vocab_size
    if any(i < 0 or i >= vocab for row in forced for i in row):
        raise ValueError(f"target {spec.name!r}: forced token ids must lie in [0, {vocab})")
    return forced if any(forced) else None


def _ban(logits: torch.Tensor, spec: TargetSpec, written: torch.Tensor) -> torch.Tensor:
    """Logits (B, 1, vocab) with the ids ``spec.banned`` names for each prompt set to -inf in every view's row;
    ``written`` (B, t) holds the ids each row has written so far."""
    prompts = logits.shape[0] // spec.views
    logits = logits.clone()
    for i in range(prompts):
        ids = [int(j) for j in spec.banned(i, written[i].tolist())]
        if ids:
            logits[i::prompts, 0, ids] = float("-inf")
    return logits


def _force(new: torch.Tensor, prob: torch.Tensor, forced: list[list[int]], t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``t``'s tokens (B, 1) with each row's forced id written over its prediction where it has one;
    a forced token's probability is NaN (it was not drawn)."""
    rows = [i for i, ids in enumerate(forced) if t < len(ids)]
    if not rows:
        return new, prob
    new, prob = new.clone(), prob.clone().float()
    index = torch.tensor(rows, device=new.device)
    new[index, 0] = torch.tensor([forced[i][t] for i in rows], dtype=new.dtype, device=new.device)
    prob[index, 0] = float("nan")
    return new, prob
