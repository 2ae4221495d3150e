"""Beam search with a length penalty and early stopping (the `transformers` algorithm).

Per prompt, `num_beams` running hypotheses are extended by one token per step. Of the
2 x num_beams best extensions (summed log-probabilities), those among the best num_beams that
end the sequence (a stop token, a stop string, or the last allowed step) become finished
hypotheses scored sum(log p) / new_tokens ** length_penalty; the best num_beams that do not
end keep running. A prompt is done when

- early_stopping=True:    num_beams hypotheses are finished;
- early_stopping=False:   num_beams are finished and the best running beam, scored at its
                          current length, cannot beat the worst finished one;
- early_stopping="never": the same, but scored at max_new_tokens when length_penalty > 0
                          (the best it could ever reach).

The returned sequence of a prompt is its best finished hypothesis. Shapes: B prompts,
K beams, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from plmkit.infer.stepper import Stepper

NEG = -1.0e9


@dataclass
class Hypotheses:
    """The best finished hypotheses of one prompt: (score, tokens), best first, at most `size`."""

    size: int
    items: list[tuple[float, list[int]]] = field(default_factory=list)
    done: bool = False

    @property
    def full(self) -> bool:
        return len(self.items) >= self.size

    @property
    def worst(self) -> float:
        return self.items[-1][0]

    def add(self, score: float, tokens: list[int]) -> None:
        self.items.append((score, tokens))
        self.items.sort(key=lambda item: -item[0])
        del self.items[self.size :]


@dataclass
class BeamSettings:
    num_beams: int
    max_new_tokens: int
    length_penalty: float = 1.0
    early_stopping: bool | str = False


def beam_search(stepper: Stepper, settings: BeamSettings, process: Callable[[Tensor, int], Tensor],
                ends: Callable[[list[int]], bool]) -> list[Hypotheses]:
    """Run beam search for every prompt of `stepper`; returns each prompt's finished hypotheses.

    process(log_probs (B*K, V), step) applies penalties and min-new-tokens to log-probabilities;
    ends(tokens) says whether a candidate's new tokens end the sequence (stop token or string).
    """
    b, k = stepper.batch_size, settings.num_beams
    device = stepper.device
    logits = stepper.prefill()
    stepper.reorder(torch.arange(b, device=device).repeat_interleave(k))  # every prompt's row, k times
    logits = logits.repeat_interleave(k, dim=0)
    running = torch.full((b, k), NEG, device=device)
    running[:, 0] = 0.0  # only the first copy may start, so the k beams differ
    beams: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(b)]
    finished = [Hypotheses(k) for _ in range(b)]
    for n in range(settings.max_new_tokens):
        log_probs = process(F.log_softmax(logits.float(), dim=-1), n)  # (B*K, V)
        vocab = log_probs.size(-1)
        total = (log_probs.view(b, k, vocab) + running[:, :, None]).view(b, k * vocab)
        cand_scores, cand = total.topk(2 * k, dim=1)  # (B, 2K), best first
        cand_beam, cand_token = cand // vocab, cand % vocab
        last = n + 1 == settings.max_new_tokens
        ending = _ending(beams, cand_beam.tolist(), cand_token.tolist(), ends, last)  # (B, 2K) bool
        _collect(finished, beams, cand_scores.tolist(), cand_beam.tolist(), cand_token.tolist(), ending,
                 (n + 1) ** settings.length_penalty)
        ending_t = torch.tensor(ending, device=device)
        running, pick = (cand_scores + NEG * ending_t).topk(k, dim=1)  # best k that keep running
        src_beam, tokens = cand_beam.gather(1, pick), cand_token.gather(1, pick)  # (B, K)
        beams = [[beams[i][j] + [t] for j, t in zip(src, tok)]
                 for i, (src, tok) in enumerate(zip(src_beam.tolist(), tokens.tolist()))]
        _update_done(finished, running[:, 0].tolist(), n + 1, settings)
        if last or all(h.done for h in finished):
            break
        rows = (src_beam + torch.arange(b, device=device)[:, None] * k).view(-1)
        stepper.reorder(rows)
        logits = stepper.step(tokens.view(-1))
    return finished


def _ending(beams: list[list[list[int]]], cand_beam: list[list[int]], cand_token: list[list[int]],
            ends: Callable[[list[int]], bool], last: bool) -> list[list[bool]]:
    """Whether each candidate (beam + token) ends its sequence: (B, 2K) nested lists."""
    return [[last or ends(beams[i][j] + [t]) for j, t in zip(bs, ts)]
            for i, (bs, ts) in enumerate(zip(cand_beam, cand_token))]


def _collect(finished: list[Hypotheses], beams: list[list[list[int]]], scores: list[list[float]],
             cand_beam: list[list[int]], cand_token: list[list[int]], ending: list[list[bool]],
             length_factor: float) -> None:
    """Add the ending candidates among each open prompt's best K as finished hypotheses."""
    for i, hyps in enumerate(finished):
        if hyps.done:
            continue
        for rank in range(hyps.size):
            if ending[i][rank]:
                hyps.add(scores[i][rank] / length_factor, beams[i][cand_beam[i][rank]] + [cand_token[i][rank]])


def _update_done(finished: list[Hypotheses], best_running: list[float], length: int, settings: BeamSettings) -> None:
    """Mark prompts whose finished hypotheses can no longer change."""
    lp = settings.length_penalty
    best_length = settings.max_new_tokens if settings.early_stopping == "never" and lp > 0 else length
    for hyps, best in zip(finished, best_running):
        if hyps.done or not hyps.full:
            continue
        if settings.early_stopping is True or best / best_length**lp <= hyps.worst:
            hyps.done = True
