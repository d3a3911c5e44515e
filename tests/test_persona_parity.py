"""PersonaPlex's generation against NVIDIA's `LMGen` (fixtures by tests/fixtures/make_persona_fixtures.py): the
prompt prefill (a voice from Mimi codes, or replayed from its saved embeddings, then the role's text) and 40
conversation calls give NVIDIA's tokens (greedy) and logits within 1e-4; a conversation without a prompt too."""

import dataclasses
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx import LmConfig, load_lm
from moshi_mlx.devtools.tiny_tokenizer import write_tiny_tokenizer
from moshi_mlx.model import persona_gen
from moshi_mlx.model.persona_gen import PersonaGen
from moshi_mlx.persona.prompt import (
    PROMPT_TEXT,
    SILENCE_CODES,
    SILENCE_STEPS,
    SINE_CODES,
    PersonaPrompt,
    persona_tokens,
    prefill,
    prompt_steps,
)

FIXTURES = Path(__file__).parent / "fixtures"
TRACE = {k: np.array(v) for k, v in mx.load(str(FIXTURES / "persona_tiny_trace.safetensors")).items()}
RUNS = ("voice", "saved", "fresh", "window")
WINDOW = 12  # the `window` run's context
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory) -> Path:
    """The fixture's int8 weights (NVIDIA's names) as float32."""
    packed = mx.load(str(FIXTURES / "persona_tiny_weights.safetensors"))
    weights = {}
    for name, q in packed.items():
        if name.startswith("scale."):
            continue
        w = q.astype(mx.float32) * packed[f"scale.{name}"]
        weights[name] = w + 1.0 if name.endswith(".alpha") else w
    path = tmp_path_factory.mktemp("persona") / "model.safetensors"
    mx.save_safetensors(str(path), weights)
    return path


@pytest.fixture(scope="module")
def lm(weights_path):
    config = LmConfig.from_json(FIXTURES / "persona_tiny.json")
    assert config.takes_persona and config.dep_q == 16
    return load_lm(weights_path, config, dtype=mx.float32)


@pytest.fixture(scope="module")
def models(lm, weights_path):
    """The model of each run: the `window` run's has a context of 12 steps."""
    short = dataclasses.replace(lm.config, context=WINDOW)
    return {**{run: lm for run in RUNS}, "window": load_lm(weights_path, short, dtype=mx.float32)}


def prompt_of(run: str) -> PersonaPrompt | None:
    text = [int(t) for t in TRACE["text_tokens"]]
    if run == "voice":
        return PersonaPrompt(text_tokens=text, voice_codes=TRACE["voice_codes"])
    if run == "saved":
        return PersonaPrompt(text_tokens=text, voice_embeddings=TRACE["saved_embeddings"],
                             voice_cache=TRACE["saved_cache"])
    return None


def started(lm, run: str, compile: bool) -> PersonaGen:
    """As NVIDIA's offline.py: warm up 4 frames, reset, then the prompt."""
    gen = PersonaGen(lm, temp=0, temp_text=0, compile=compile)
    rng = np.random.default_rng(1)
    for _ in range(4):
        gen.step(rng.integers(0, 2048, size=8))
    gen.reset()
    prompt = prompt_of(run)
    if prompt is not None:
        assert prefill(gen, prompt) == prompt_steps(prompt) == gen.step_index
    return gen


def nvidia_frame(gen: PersonaGen) -> np.ndarray:
    """What NVIDIA's `step` returns after the call just collected: stream k from column n - max_delay + delay_k."""
    cfg = gen.cfg
    return np.array([gen._generated[-1 - (cfg.max_delay - d)][k] for k, d in enumerate(cfg.delays)])


@pytest.mark.parametrize("run", RUNS)
def test_tokens_and_logits_are_nvidias(models, run):
    gen = started(models[run], run, compile=False)
    expected_out, worst = TRACE[f"{run}_out"], 0.0
    text_logits, top_index, top_values = (TRACE[f"{run}_{k}"] for k in ("text_logits", "top_index", "top_values"))
    audio = []
    for i, user in enumerate(TRACE["user"]):
        out = gen.step_forced(user)
        if expected_out[i, 0] < 0:
            assert out.audio_codes is None and not np.isfinite(text_logits[i]).any()
            continue
        assert (nvidia_frame(gen) == expected_out[i]).all(), i
        assert (out.audio_codes == expected_out[i, 1:9]).all(), i
        worst = max(worst, np.abs(out.text_logits - text_logits[i]).max(),
                    np.abs(np.take_along_axis(out.audio_logits, top_index[i], axis=-1) - top_values[i]).max())
        audio.append(out.audio_logits)
    worst = max(worst, np.abs(audio[0] - TRACE[f"{run}_audio_logits_first"]).max(),
                np.abs(audio[-1] - TRACE[f"{run}_audio_logits_last"]).max())
    assert worst < TOLERANCE


@pytest.mark.parametrize("run", RUNS)
def test_compiled_steps_give_the_same_tokens(models, run):
    gen = started(models[run], run, compile=True)
    expected = TRACE[f"{run}_out"]
    pending = gen.submit(TRACE["user"][0])
    for i in range(len(TRACE["user"])):
        # Submitted one call ahead, as the pipelined loop does.
        ahead = gen.submit(TRACE["user"][i + 1]) if i + 1 < len(TRACE["user"]) else None
        out = gen.collect(pending)
        pending = ahead
        if expected[i, 0] >= 0:
            assert (out.audio_codes == expected[i, 1:9]).all(), i
        if i + 1 < len(expected) and expected[i + 1, 0] >= 0:
            assert out.text_token == expected[i + 1, 0], i  # NVIDIA returns a call's text at the next call


def test_conversation_starts_as_nvidias_first_calls(lm):
    """Without a prompt: call 0 only sets the initial tokens, no audio until the third call."""
    gen = PersonaGen(lm, temp=0, temp_text=0)
    outs = [gen.step(user) for user in TRACE["user"][:3]]
    assert [o.audio_codes is None for o in outs] == [True, True, False]
    assert outs[0].text_token == 3
    assert (TRACE["fresh_out"][:2] == -1).all() and (TRACE["fresh_out"][2] >= 0).all()


def test_prefill_in_chunks_equals_one_call_per_step(lm, monkeypatch):
    """The batched prefill leaves the model as NVIDIA's one step per call does (here: `step_forced` per step)."""
    prompt = prompt_of("voice")
    monkeypatch.setattr(persona_gen, "PREFILL_CHUNK", 5)
    done = []
    batched = PersonaGen(lm, temp=0, temp_text=0)
    prefill(batched, prompt, on_step=lambda d, t: done.append((d, t)))
    total = prompt_steps(prompt)
    assert done[-1] == (total, total) and [d for d, _ in done] == sorted(d for d, _ in done) and len(done) > 3
    stepwise = PersonaGen(lm, temp=0, temp_text=0)
    steps = [(PROMPT_TEXT, frame) for frame in prompt.voice_codes.T]
    steps += [(PROMPT_TEXT, SILENCE_CODES)] * SILENCE_STEPS + [(t, SILENCE_CODES) for t in prompt.text_tokens]
    steps += [(PROMPT_TEXT, SILENCE_CODES)] * SILENCE_STEPS
    for text, moshi in steps:
        stepwise.step_forced(SINE_CODES, text=text, audio=moshi)
    for user in TRACE["user"][:5]:
        a, b = batched.step_forced(user), stepwise.step_forced(user)
        assert (a.audio_codes == b.audio_codes).all() and a.text_token == b.text_token
        assert np.abs(a.text_logits - b.text_logits).max() < 1e-5
        assert np.abs(a.audio_logits - b.audio_logits).max() < 1e-5


def test_role_is_tokenized_as_nvidia_does(tmp_path):
    tokenizer = write_tiny_tokenizer(tmp_path / "tok.model")
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    meta = json.loads(json.dumps(mx.load(str(FIXTURES / "persona_tiny_trace.safetensors"), return_metadata=True)[1]))
    assert persona_tokens(sp, meta["prompt"]) == [int(t) for t in TRACE["text_tokens"]]
    assert meta["wrapped"] == f"<system> {meta['prompt']} <system>"
    assert persona_tokens(sp, f"  <system> {meta['prompt']} <system> ") == persona_tokens(sp, meta["prompt"])
    assert persona_tokens(sp, "") is None
