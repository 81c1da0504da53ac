"""Option subspace: multiple-choice answers seen in probability space, full vocabulary versus options.

Each question is asked with lettered options (``A. …``, ``B. …``) and an instruction to answer with the
letter, in the model's chat template when it has one. At the answer position the dense and the pruned
model give logits ``z``, ``z'`` over the whole vocabulary. The *option subspace* keeps only the option
tokens and renormalises: option ``k`` has the tokens ``S_k`` (its letter with and without a leading
space, whichever are single tokens of this tokenizer) and the logit

    ζ_k = T · log Σ_{i∈S_k} exp(z_i / T),      so that   softmax(ζ / T)_k = Σ_{i∈S_k} p_i / Σ_{j∈∪S} p_j

(with one token per option, ``ζ_k = z_i``). The probability-space metrics of
:func:`metrics.logit_space_stats` (cosine, KL both ways, Theorems 2 and 3 with their ratios) are reported
for ``p`` over the full vocabulary (space ``p_full``) and over the options (space ``p_options``), with
whether the chosen option (argmax of ``ζ``) changes, the probability mass the options carry, and the
dense model's top tokens with their pruned probabilities and ranks.

Option tokens are resolved by :func:`option_token_ids`; a label that is not a single token of the
tokenizer (or is its unknown token), or two options sharing a token, raise :class:`OptionTokenError`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from prunelens.analysis import metrics as M
from prunelens.analysis.pairstats import DEFAULT_KS, LogitState, default_k, p_keys
from prunelens.analysis.tracing import model_forward
from prunelens.analysis.transitions import P_RENAME, check_temperatures, stats_rows
from prunelens.models.adapter import input_device
from prunelens.prune.specs import CHOICE_LIMIT, CHOICE_SPLIT, CHOICE_TASK  # the choice objective's defaults
from prunelens.utils.errors import InputError
from prunelens.utils.progress import progress_bar

__all__ = [
    "OptionTokenError",
    "option_token_ids",
    "mc_prompt",
    "SubspaceResult",
    "option_subspace",
    "DEFAULT_LABELS",
    "INSTRUCTION",
]

DEFAULT_LABELS = tuple(string.ascii_uppercase)
INSTRUCTION = "Answer with the letter of the correct option."


class OptionTokenError(InputError):
    """An answer option cannot be read as one token of the tokenizer."""


def option_token_ids(tokenizer, labels) -> list[list[int]]:
    """For each label, the ids of its single-token spellings: ``label`` and ``" " + label``.

    Raises :class:`OptionTokenError` when neither spelling is one (known) token, or when two labels
    share a token.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    out: list[list[int]] = []
    owner: dict[int, str] = {}
    for lab in labels:
        ids: list[int] = []
        tried = []
        for text in (lab, " " + lab):
            enc = tokenizer.encode(text, add_special_tokens=False)
            tried.append(f"{text!r} → {enc}")
            if len(enc) == 1 and enc[0] != unk and enc[0] not in ids:
                ids.append(int(enc[0]))
        if not ids:
            raise OptionTokenError(
                f"answer option {lab!r} is not a single token of this tokenizer ({'; '.join(tried)}); "
                "choose option labels that are (e.g. --option-labels with single-token labels)"
            )
        for t in ids:
            if t in owner and owner[t] != lab:
                raise OptionTokenError(f"options {owner[t]!r} and {lab!r} share the token {t}")
            owner[t] = lab
        out.append(ids)
    return out


def _question_and_options(ex) -> tuple[str, list[str]]:
    meta = getattr(ex, "meta", {}) or {}
    question = meta.get("question") or meta.get("question_stem") or ex.context
    options = meta.get("options") or [c.strip() for c in ex.choices]
    return str(question).strip(), [str(o).strip() for o in options]


def mc_prompt(ex, labels=DEFAULT_LABELS, instruction: str = INSTRUCTION) -> str:
    """The lettered question: ``question``, one ``L. option`` line per option, then the instruction."""
    question, options = _question_and_options(ex)
    if len(options) > len(labels):
        raise OptionTokenError(f"{ex.task}/{ex.id}: {len(options)} options but only {len(labels)} labels")
    body = "\n".join(f"{lab}. {opt}" for lab, opt in zip(labels, options))
    return f"{question}\n{body}\n{instruction}"


def encode_prompt(tokenizer, text: str, chat: bool = True) -> list[int]:
    from prunelens.evaluation.decoding import format_prompt

    templated = bool(chat and getattr(tokenizer, "chat_template", None))
    s = format_prompt(tokenizer, text, chat)
    return tokenizer.encode(s, add_special_tokens=not templated)


def choice_set(
    tokenizer,
    task: str = CHOICE_TASK,
    *,
    split: str = CHOICE_SPLIT,
    limit: int = CHOICE_LIMIT,
    seed: int = 0,
    labels=DEFAULT_LABELS,
    chat: bool = True,
    examples=None,
):
    """The lettered questions the ``choice`` drop objective scores on (a
    :class:`~prunelens.prune.objectives.ChoiceSet`): ``limit`` seeded questions of ``task``'s ``split``
    (ARC-Easy's validation split by default, disjoint from the test split every evaluation reads),
    each prompt as the option-subspace analysis builds it. ``examples``: already loaded questions."""
    from prunelens.data.tasks import load_task
    from prunelens.prune.objectives import ChoiceSet

    exs = list(examples) if examples is not None else load_task(task, split=split, limit=limit, seed=seed)
    n_opts = [len(_question_and_options(ex)[1]) for ex in exs]
    groups = option_token_ids(tokenizer, list(labels)[: max(n_opts)])
    return ChoiceSet(
        [encode_prompt(tokenizer, mc_prompt(ex, labels), chat) for ex in exs],
        [groups[:k] for k in n_opts],
        f"{task} ({split}, {len(exs)} questions, seed {seed})",
    )


@dataclass
class SubspaceResult:
    variant: str
    examples: list[str]
    tasks: list[str]
    values: dict[tuple[str, str, float | None], np.ndarray]  # (space, metric, T) -> per example
    choices: list[dict] = field(default_factory=list)
    top_tokens: list[dict] = field(default_factory=list)
    temperatures: tuple[float, ...] = (1.0,)
    option_tokens: list[list[int]] = field(default_factory=list)

    def frames(self):
        from prunelens.analysis.tables import subspace_frames

        return subspace_frames(self)


def option_logits(z: Tensor, groups: list[list[int]], T: float) -> Tensor:
    """``ζ_k = T·logsumexp(z[S_k]/T)`` per option (``(..., K)``)."""
    cols = []
    for ids in groups:
        sub = z[..., ids].double() / T
        cols.append(torch.logsumexp(sub, -1) * T)
    return torch.stack(cols, -1)


@torch.no_grad()
def final_logits(
    model, prompts: list[list[int]], *, pad_id: int = 0, batch_size: int = 8, desc: str = ""
) -> Tensor:
    """The model's logits at the last token of each prompt (left padding), ``(N, V)`` float32."""
    device = input_device(model)
    outs = []
    with progress_bar(desc or "forward", total=len(prompts)) as bar:
        for b0 in range(0, len(prompts), batch_size):
            seqs = prompts[b0 : b0 + batch_size]
            L = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), L), int(pad_id), dtype=torch.long)
            mask = torch.zeros((len(seqs), L), dtype=torch.bool)
            for r, s in enumerate(seqs):
                ids[r, L - len(s) :] = torch.tensor(s)
                mask[r, L - len(s) :] = True
            out = model_forward(model, ids.to(device), mask.to(device))
            outs.append(out.logits[:, -1].float().cpu())
            bar.advance(len(seqs))
    return torch.cat(outs)


@torch.no_grad()
def option_subspace(
    model,
    tokenizer,
    variant,
    examples,
    *,
    temperatures=(1.0,),
    labels=DEFAULT_LABELS,
    top_k: int = 10,
    batch_size: int = 8,
    chat: bool = True,
    exact: bool = False,
    ks=DEFAULT_KS,
    pad_id: int | None = None,
    dense_cache: dict | None = None,
) -> SubspaceResult:
    """Full-vocabulary versus option-subspace metrics of ``variant`` over multiple-choice ``examples``.

    ``dense_cache``: a dict shared between calls on the same dense model, so the dense logits of the
    same prompts are computed once for every variant (the study analyses one variant per call)."""
    temps = check_temperatures(temperatures)
    examples = list(examples)
    if not examples:
        raise ValueError("no multiple-choice example to analyse")
    n_opts = [len(_question_and_options(ex)[1]) for ex in examples]
    groups_all = option_token_ids(tokenizer, list(labels)[: max(n_opts)])
    prompts = [encode_prompt(tokenizer, mc_prompt(ex, labels), chat) for ex in examples]
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    key = ("subspace_dense_logits", tuple(map(tuple, prompts)), int(pad_id))
    if dense_cache is not None and key in dense_cache:
        z_d = dense_cache[key]
    else:
        z_d = final_logits(
            model, prompts, pad_id=pad_id, batch_size=batch_size, desc="option subspace (dense)"
        )
        if dense_cache is not None:
            dense_cache[key] = z_d
    with variant.active(model):
        z_p = final_logits(
            model, prompts, pad_id=pad_id, batch_size=batch_size, desc=f"option subspace ({variant.name})"
        )
    values = _PerExample(len(examples))
    _full_vocabulary(values, z_d, z_p, temps, ks, exact)
    choices = _option_subspace(values, examples, n_opts, groups_all, z_d, z_p, temps)
    return SubspaceResult(
        variant.name,
        [str(ex.id) for ex in examples],
        [ex.task for ex in examples],
        values.values,
        choices,
        _top_token_rows(tokenizer, examples, z_d, z_p, temps[0], top_k),
        temps,
        groups_all,
    )


class _PerExample:
    """``values[(space, metric, T)]``: one float32 per example, NaN until measured."""

    def __init__(self, n: int):
        self.n = n
        self.values: dict[tuple[str, str, float | None], np.ndarray] = {}

    def put(self, key: tuple[str, str, float | None], idx, v: Tensor) -> None:
        arr = self.values.get(key)
        if arr is None:
            arr = self.values[key] = np.full(self.n, np.nan, dtype=np.float32)
        arr[idx] = v.float().numpy()


def _full_vocabulary(values: _PerExample, z_d: Tensor, z_p: Tensor, temps, ks, exact: bool) -> None:
    """Probability-space metrics over the whole vocabulary (space ``p_full``), 32 questions at a time."""
    N, V = z_d.shape
    K = default_k(ks, V)
    for c0 in range(0, N, 32):
        sl = slice(c0, min(N, c0 + 32))
        a, b = LogitState(z_d[sl], K), LogitState(z_p[sl], K)
        res = stats_rows(a, b, temps, ks, exact=exact, z_dense=z_d[sl], z_pruned=z_p[sl])
        a.release()
        b.release()
        idx = np.arange(sl.start, sl.stop)
        for (space, metric, T), v in res.items():
            if space == "p":
                values.put(("p_full", metric, T), idx, v)


def _option_subspace(values: _PerExample, examples, n_opts, groups_all, z_d, z_p, temps) -> list[dict]:
    """Metrics of the options' distribution (space ``p_options``), per number of options; returns the
    chosen option of each question at each temperature, dense and pruned (one row per question × T)."""
    by_k: dict[int, list[int]] = {}
    for j, k in enumerate(n_opts):
        by_k.setdefault(k, []).append(j)
    pk = p_keys(())
    choice_rows: dict[tuple[int, float], dict] = {}
    for k, idx in by_k.items():
        groups = groups_all[:k]
        sel = torch.tensor(idx)
        for T in temps:
            zo, zpo = option_logits(z_d[sel], groups, T), option_logits(z_p[sel], groups, T)
            st = M.logit_space_stats(zo, zpo, T, ks=())
            for key in pk:
                values.put(("p_options", P_RENAME.get(key, key), T), np.array(idx), st[key])
            lp_d, lp_p = (
                torch.log_softmax(z_d[sel].double() / T, -1),
                torch.log_softmax(z_p[sel].double() / T, -1),
            )
            flat = [t for g in groups for t in g]
            mass_d = lp_d[:, flat].exp().sum(-1)
            mass_p = lp_p[:, flat].exp().sum(-1)
            cd, cp = zo.argmax(-1), zpo.argmax(-1)
            for r, j in enumerate(idx):
                ex = examples[j]
                choice_rows[(j, T)] = {
                    "example": str(ex.id),
                    "task": ex.task,
                    "label": int(ex.label),
                    "n_options": k,
                    "temperature": T,
                    "dense_choice": int(cd[r]),
                    "pruned_choice": int(cp[r]),
                    "changed": bool(cd[r] != cp[r]),
                    "dense_correct": bool(int(cd[r]) == ex.label),
                    "pruned_correct": bool(int(cp[r]) == ex.label),
                    "option_mass_dense": float(mass_d[r]),
                    "option_mass_pruned": float(mass_p[r]),
                }
    return [choice_rows[(j, T)] for j in range(len(examples)) for T in temps]


def _top_token_rows(tokenizer, examples, z_d: Tensor, z_p: Tensor, T0: float, top_k: int) -> list[dict]:
    """The dense top tokens of each question with their pruned probabilities and ranks (at ``T0``)."""
    N, V = z_d.shape
    p_d = torch.softmax(z_d.double() / T0, -1)
    p_p = torch.softmax(z_p.double() / T0, -1)
    kk = min(top_k, V)
    top_idx = z_d.topk(kk, -1).indices
    top_rows = []
    for j in range(N):
        ex = examples[j]
        for r in range(kk):
            tid = int(top_idx[j, r])
            top_rows.append(
                {
                    "example": str(ex.id),
                    "task": ex.task,
                    "rank": r + 1,
                    "token_id": tid,
                    "token": tokenizer.decode([tid]),
                    "p_dense": float(p_d[j, tid]),
                    "p_pruned": float(p_p[j, tid]),
                    "rank_pruned": int((z_p[j] > z_p[j, tid]).sum()) + 1,
                }
            )
    return top_rows


def analysis_questions(tokenizer, task: str | None, limit: int, seed: int, labels, notes: list[str]):
    """The option-subspace analysis's questions: ``(examples, task)``, or ``(None, None)`` when it is
    skipped. ``task`` ``None`` means the default (:data:`CHOICE_TASK`), skipped with a line in ``notes`` when
    its data or single-token option labels are missing; a task asked for by name must work
    (:class:`OptionTokenError` / the data error otherwise); ``"none"`` skips it."""
    from prunelens.data.paths import DataNotFoundError
    from prunelens.data.tasks import TASKS, load_task, tasks_of_kind

    if (task or "").lower() == "none":
        return None, None
    name = task or CHOICE_TASK
    if name not in TASKS or TASKS[name].kind != "mc":
        mc = ", ".join(tasks_of_kind("mc"))
        raise OptionTokenError(f"--mc {name!r} is not a multiple-choice task ({mc})")
    try:
        examples = load_task(name, limit=limit, seed=seed)
    except (DataNotFoundError, OSError) as exc:
        if task:
            raise DataNotFoundError(str(exc).splitlines()[0]) from None
        notes.append(f"option subspace skipped: {name} data not available")
        return None, None
    if examples:
        try:
            n_opts = max(len(e.choices) for e in examples)
            option_token_ids(tokenizer, list(labels or DEFAULT_LABELS)[:n_opts])
        except OptionTokenError as exc:
            if task:
                raise OptionTokenError(f"{exc} (or skip the option subspace with --mc none)") from None
            notes.append(f"option subspace skipped: {exc}")
            return None, name
    return examples, name
