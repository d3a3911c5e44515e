"""A persona on a pipeline: fed once before the first frame, again for each new conversation, never counted in the
conversation's frames."""

from pathlib import Path

import numpy as np
import pytest

from moshi_mlx import MoshiError, run_frames
from moshi_mlx.persona.prompt import prompt_steps
from moshi_mlx.persona.session import Persona
from moshi_mlx.persona.voice import VoiceAudio, read_voice_embedding

FIXTURES = Path(__file__).parent / "fixtures" / "voice"


def voice_audio(seconds=0.5):
    t = np.arange(int(seconds * 24000)) / 24000
    return VoiceAudio((0.05 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), "voice.wav")


@pytest.fixture(scope="module")
def pipeline(tiny_persona_model):
    pipeline = tiny_persona_model.load_pipeline(seed=0)
    yield pipeline
    pipeline.close()


def user_audio(frames=6):
    return (0.1 * np.random.default_rng(0).standard_normal(frames * 1920)).astype(np.float32)


def test_fed_before_the_first_frame_and_again_for_each_conversation(pipeline):
    pipeline.persona = Persona.make(pipeline.tokenizer, "You are a pirate.", voice_audio())
    calls = []
    report = pipeline.new_conversation(lambda done, total: calls.append((done, total)))
    steps = prompt_steps(pipeline.persona.prompt())
    assert report.steps == steps == 7 + 12 + len(pipeline.persona.text_tokens)  # 0.5 s: 7 frames
    assert calls[-1] == (steps, steps) and report.encode_s > 0 and report.total_s >= report.encode_s
    assert pipeline.ready and pipeline.gen.step_index == steps
    first = run_frames(pipeline, user_audio(), keep=True)  # ready: not fed a second time
    assert [e.index for e in first.events] == list(range(6))
    assert pipeline.gen.step_index == steps + 6 and not pipeline.ready
    second = run_frames(pipeline, user_audio(), keep=True)  # used: a new conversation, the persona fed again
    assert second.text_tokens == first.text_tokens
    np.testing.assert_array_equal(second.moshi, first.moshi)
    assert all(e.decode_ms > 0 for e in first.events)  # after a prefill every frame has Moshi's audio


def test_the_persona_changes_what_is_said(pipeline):
    pipeline.persona = Persona.make(pipeline.tokenizer, "You are a pirate.", voice_audio())
    pirate = run_frames(pipeline, user_audio(), keep=True)
    pipeline.persona = Persona.make(pipeline.tokenizer, "You are a patient French teacher.", voice_audio())
    teacher = run_frames(pipeline, user_audio(), keep=True)
    pipeline.persona = None
    plain = run_frames(pipeline, user_audio(), keep=True)
    assert pirate.text_tokens != teacher.text_tokens or not np.array_equal(pirate.moshi, teacher.moshi)
    assert plain.events[0].index == 0 and pipeline.gen.step_index == 6


def test_saved_voice_and_its_checks(pipeline, tiny_persona_model):
    config = pipeline.gen.cfg
    voice = read_voice_embedding(FIXTURES / "voice_tiny.pt", "voice_tiny.pt", config)
    persona = Persona.make(pipeline.tokenizer, None, voice)
    assert persona.describe() == "voice voice_tiny.pt" and persona.steps == 6 + 12
    assert persona.check_context(config) is None
    long = next(p for n in range(1, 100) if 50 < (p := Persona.make(pipeline.tokenizer, "word " * n, voice)).steps)
    assert long.check_context(config).startswith(f"note: the persona takes {long.steps} of the 100 steps")
    with pytest.raises(MoshiError, match="more than the model's context of 100"):
        Persona.make(pipeline.tokenizer, "word " * 200, voice).check_context(config)
    pipeline.persona = persona
    report = pipeline.new_conversation()
    assert report.steps == 18 and report.encode_s == 0
    pipeline.persona = None


def test_describe_shortens_the_role():
    persona = Persona(" ".join(["You are a very patient teacher."] * 5), [1], None, "NATF2")
    text = persona.describe(width=40)
    assert text.startswith('"You are a very patient teacher. You are') and text.endswith('…" · voice NATF2')
