"""The kiosk judge: how much a drawing (or camera frame) looks like a prompt, 0-100, with moderation.

    from dkit.edge.infer.judge import Judge

    judge = Judge(Runtime.load("runs/quickdraw/bundle"))
    v = judge.score(rgb, "a raccoon driving a tractor")   # any prompt: embedded on the device, cached
    v.score, v.verdict, v.reason                          # 73.0, "ok", None

Score: cosine(student image embedding, prompt text embedding) through the bundle's calibration curve
(dkit.export.judge: piecewise-linear through percentiles of the cosines the student gives the kit's training
images against single prompts, each embedded by `PromptEncoder`, this module's own path for a typed prompt), shown
and compared with `no_match_score` rounded to one decimal (dkit.edge.infer.moderation.shown_score).
A prompt the bundle ships uses its stored embedding; any other is tokenized (dkit.edge.infer.tokenizer), encoded by the
bundle's text encoder (text.onnx) with the bundle's templates, averaged and normalised (`PromptEncoder`), exactly
as the teacher embedded the shipped ones, and kept in a bounded cache.

Moderation, as the paint.wtf team learned it (the rule itself is dkit.edge.infer.moderation, shared with the
evaluation); every prompt and threshold comes from the bundle's `judge` section (the kit's `judge:`), none
from code:
- `blocked`: the image is closer to one of `unsafe_prompts` than to its prompt (by more than `unsafe_margin`):
  no score, and the server stores nothing.
- `text`: closer to one of `text_prompts` ("text", "handwriting", ...) than to its prompt (by more than
  `text_margin`): people write the prompt instead of drawing it; the score is multiplied by `text_penalty`.
- `no_match`: the score is below `no_match_score`: it matches the prompt badly, and the verdict says what
  it looks like most among the prompts the bundle knows, instead of presenting a confident number.
- `ok` otherwise.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np

from dkit.edge.bundle.manifest import MAX_PROMPT_CHARS
from dkit.edge.infer.backends.ort_backend import session_options
from dkit.edge.infer.moderation import moderate, penalise, shown_score
from dkit.edge.infer.runtime import Runtime, RuntimeConfigError
from dkit.edge.infer.tokenizer import Tokenizer

PROMPT_CACHE = 256  # prompts whose embedding is kept


@dataclass(frozen=True)
class Verdict:
    """The judge's answer for one image and prompt: the 0-100 score after moderation (None when blocked), the score
    before it, the cosine it came from, the verdict (ok, text, no_match, blocked) with its reason, and the known
    prompt the image looks most like. `as_dict()` for JSON (the kiosk's admin view; public routes answer less)."""

    prompt: str
    score: float | None  # 0-100 after any penalty; None when blocked
    raw_score: float  # 0-100 before moderation
    cosine: float
    verdict: str  # ok | text | no_match | blocked
    reason: str | None
    looks_like: str | None  # the known prompt the image is closest to

    def as_dict(self) -> dict:
        """Every field as a plain dict (json.dumps-able)."""
        return asdict(self)


class PromptEncoder:
    """How the device embeds a typed prompt: each of the bundle's templates formatted with it, tokenized
    (dkit.edge.infer.tokenizer), encoded by the bundle's text encoder, normalised, averaged and normalised again; one
    (D,) float32 row per prompt. The judge embeds every prompt it does not ship this way, and the export fits the
    score calibration on prompts embedded by this same class (dkit.export.judge), so the curve's cosines are the
    device's.

        encoder = PromptEncoder.from_files("bundle/text.onnx", "bundle/bpe_simple_vocab_16e6.txt.gz", 77, templates)
        encoder(["a cat", "a raccoon driving a tractor"])   # (2, D)
    """

    def __init__(self, session, tokenizer: Tokenizer, templates):
        self.session, self.tokenizer, self.templates = session, tokenizer, list(templates)
        self.input = session.get_inputs()[0].name

    @classmethod
    def from_files(cls, text_model, vocab, context_length: int, templates, *, threads: int = 0,
                   providers: list[str] | None = None) -> PromptEncoder:
        """From a text encoder (ONNX) and a tokenizer vocabulary file, on onnxruntime (the CPU by default)."""
        import onnxruntime as ort

        session = ort.InferenceSession(str(text_model), sess_options=session_options(threads),
                                       providers=providers or ["CPUExecutionProvider"])
        return cls(session, Tokenizer.from_file(vocab, context_length), templates)

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """(K, D) normalised float32 embeddings of K prompts, each as typed (no other normalisation)."""
        out = []
        for prompt in prompts:
            texts = [t.format(prompt) for t in self.templates]
            emb = self.session.run(None, {self.input: self.tokenizer(texts)})[0]  # (T, D)
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            mean = emb.mean(axis=0)
            out.append((mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32))
        return np.stack(out) if out else np.zeros((0, 0), np.float32)


def shipped_prompts(rows, table: np.ndarray) -> dict[str, np.ndarray]:
    """The embeddings a judge bundle ships for prompts typed as they are: every row of prompts.npy but the
    ontology classes' ensembles (a typed class name is one prompt, embedded on the device)."""
    return {r.text: table[i] for i, r in enumerate(rows) if r.role != "class"}


def typed_prompt_embeddings(prompts: list[str], shipped: dict[str, np.ndarray], encoder: PromptEncoder) -> np.ndarray:
    """(K, D) the embedding the judge scores each prompt with when it is typed: the shipped one, else the
    encoder's (`Judge.embed_prompt` without its cache; the export's score calibration is fitted on these)."""
    prompts = [check_prompt(p) for p in prompts]
    return np.stack([shipped[p] if p in shipped else encoder([p])[0] for p in prompts]).astype(np.float32)


class Judge:
    """Scores images against any prompt with a judge bundle's student, text encoder and calibration, and
    moderates them (dkit.edge.infer.moderation) with the bundle's `judge` section."""

    def __init__(self, runtime: Runtime, *, cache_size: int = PROMPT_CACHE):
        import onnxruntime as ort

        if runtime.task != "embed":
            raise RuntimeConfigError(f"{runtime.bundle.source}: a {runtime.task} bundle cannot judge prompts; the "
                                     "kiosk needs a judge bundle (a clip-embed student)")
        self.runtime = runtime
        m = runtime.manifest
        if m.tokenizer is None or "text" not in m.models:
            raise RuntimeConfigError(f"{runtime.bundle.source}: this embed bundle has no text encoder or tokenizer, "
                                     "so it cannot embed prompts; export it again with a clip-embed kit")
        self.cfg = m.judge_config  # the kit's judge: section (its defaults when the kit had none)
        self.calibration = m.calibration
        providers = getattr(runtime.backend, "providers", None) or ["CPUExecutionProvider"]
        self.encoder = PromptEncoder(
            ort.InferenceSession(str(runtime.bundle.path(m.models["text"].file)),
                                 sess_options=session_options(runtime.threads), providers=providers),
            Tokenizer.from_file(runtime.bundle.path(m.tokenizer.file), m.tokenizer.context_length),
            m.prompts.templates)
        self.templates, self.tokenizer = self.encoder.templates, self.encoder.tokenizer
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.Lock()
        rows = m.prompts.rows
        table = runtime.prompt_embeddings  # (P, D)
        self.shipped = shipped_prompts(rows, table)
        self.known = [r.text for r in rows if r.role in ("class", "prompt")]  # what "looks like" can name
        self.known_emb = np.stack([table[i] for i, r in enumerate(rows) if r.role in ("class", "prompt")])
        self.text_emb = self._rows(rows, table, "text", self.cfg.text_prompts)
        self.unsafe_emb = self._rows(rows, table, "unsafe", self.cfg.unsafe_prompts)

    def _rows(self, rows, table: np.ndarray, role: str, wanted: tuple[str, ...]) -> np.ndarray:
        picked = [table[i] for i, r in enumerate(rows) if r.role == role or (r.text in wanted and r.role != "class")]
        missing = [p for p in wanted if p not in self.shipped]
        picked += [self.embed_prompt(p) for p in missing] if missing else []
        return np.stack(picked) if picked else np.zeros((0, table.shape[1]), np.float32)

    # ------------------------------------------------------------------------------------------ prompts

    def embed_prompt(self, prompt: str) -> np.ndarray:
        """(D,) normalised embedding of a prompt: the shipped one, or the text encoder's (cached)."""
        prompt = check_prompt(prompt)
        if prompt in self.shipped:
            return self.shipped[prompt]
        with self.lock:
            if prompt in self.cache:
                self.cache.move_to_end(prompt)
                return self.cache[prompt]
        mean = typed_prompt_embeddings([prompt], self.shipped, self.encoder)[0]
        with self.lock:
            self.cache[prompt] = mean
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return mean

    # ------------------------------------------------------------------------------------------ scoring

    def to_score(self, cosine: float | np.ndarray) -> float | np.ndarray:
        """Cosine(s) -> 0-100 through the bundle's calibration curve (before moderation and rounding)."""
        return self.calibration.to_score(cosine)

    def score(self, rgb: np.ndarray, prompt: str) -> Verdict:
        """Judge one (H, W, 3) uint8 RGB image against a prompt."""
        return self.judge(self.runtime(rgb).embedding, prompt)

    def judge(self, embedding: np.ndarray, prompt: str) -> Verdict:
        """Judge a (D,) normalised image embedding against a prompt."""
        p = self.embed_prompt(prompt)
        cos = float(embedding @ p)
        raw = float(shown_score(self.to_score(cos)))  # what the kiosk shows and no_match_score is compared with
        looks_like = self.known[int(np.argmax(self.known_emb @ embedding))] if len(self.known) else None
        cfg = self.cfg
        verdict = str(moderate(cos, self.text_emb @ embedding, self.unsafe_emb @ embedding, cfg, score=raw))
        if verdict == "blocked":
            return Verdict(prompt, None, raw, cos, "blocked", "this image was blocked by the kiosk's content rules",
                           None)
        score = float(shown_score(penalise(raw, np.asarray(verdict), cfg)))
        if verdict == "text":
            return Verdict(prompt, score, raw, cos, "text", "this looks like writing: draw it, don't write it "
                           f"(score x{cfg.text_penalty:g})", looks_like)
        if verdict == "no_match":
            hint = f"; it looks more like {looks_like!r}" if looks_like and looks_like != prompt else ""
            return Verdict(prompt, raw, raw, cos, "no_match", f"this doesn't match {prompt!r} well{hint}", looks_like)
        return Verdict(prompt, raw, raw, cos, "ok", None, looks_like)


def check_prompt(prompt: str) -> str:
    """A prompt stripped; empty or too long is a ValueError saying so."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty")
    prompt = " ".join(prompt.split())
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS}")
    return prompt
