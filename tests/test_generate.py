import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx import LmGen
from moshi_mlx.devtools.profiling import StepProfiler
from moshi_mlx.devtools.random_lm import random_lm, tiny_config, tiny_persona_config
from moshi_mlx.model.persona_gen import PersonaGen

USER = np.random.default_rng(0).integers(0, 64, size=(40, 8))


def run(gen, steps):
    return [gen.step(USER[t]) for t in range(steps)]


def test_step_outputs():
    gen = LmGen(random_lm(tiny_config()), seed=0)
    outs = run(gen, 4)
    assert outs[0].audio_codes is None
    for out in outs[1:]:
        assert out.audio_codes.shape == (8,) and out.audio_codes.dtype == np.int64
        assert ((0 <= out.audio_codes) & (out.audio_codes < 64)).all()
    assert all(isinstance(o.text_token, int) and 0 <= o.text_token < 64 for o in outs)


def test_seeded_sampling_is_reproducible():
    lm = random_lm(tiny_config())

    def tokens(seed):
        outs = run(LmGen(lm, seed=seed), 8)
        return [(o.text_token, None if o.audio_codes is None else o.audio_codes.tolist()) for o in outs]

    assert tokens(1) == tokens(1)
    assert tokens(1) != tokens(2)
    gen = LmGen(lm, seed=1)
    first = [o.text_token for o in run(gen, 8)]
    gen.reset()
    assert [o.text_token for o in run(gen, 8)] == first


def test_output_frame_realigns_the_acoustic_delay():
    """The frame handed out at step t is [a0(t-1), a1..a7(t)] of what the depth transformer sampled."""
    gen = LmGen(random_lm(tiny_config()), temp=0, temp_text=0)
    forced = np.random.default_rng(1).integers(0, 64, size=(6, 8))
    outs = [gen.step_forced(USER[t], text=5, audio=forced[t]) for t in range(6)]
    assert all(o.text_token == 5 for o in outs)
    for t in range(1, 6):
        assert outs[t].audio_codes.tolist() == [forced[t - 1][0], *forced[t][1:]]


@pytest.mark.parametrize("context", [40, 5])
def test_streaming_equals_teacher_forced_forward(context):
    """Per-step logits equal `forward_codes` on the sequence the generator produced, window wrap included."""
    lm = random_lm(tiny_config(context=context), seed=1)
    cfg, steps = lm.config, 3 * 5 + 2
    gen = LmGen(lm, seed=3)
    outs = [gen.step_forced(USER[t]) for t in range(steps)]
    codes = np.zeros((1, 17, steps), dtype=np.int32)
    codes[0, 0] = [o.text_token for o in outs]
    for t in range(1, steps):  # the frame of step t is [a0(t-1), a1..a7(t)]; codes hold stream k at t - delay
        codes[0, 1, t - 1] = outs[t].audio_codes[0]
        codes[0, 2:9, t - 1] = outs[t].audio_codes[1:]
    codes[0, 9:] = USER[1 : steps + 1].T  # step t sees the user's frame t on u0: one ahead of forward()
    text, audio = (np.array(x) for x in lm.forward_codes(mx.array(codes)))
    for t in range(steps - 2):
        np.testing.assert_allclose(text[0, 0, t], outs[t].text_logits, atol=1e-4)
        for k in range(8):
            position = t - cfg.delays[k + 1]
            if position >= 0:
                np.testing.assert_allclose(audio[0, k, position], outs[t].audio_logits[k], atol=1e-4)


def test_runs_past_the_context_with_a_bounded_window():
    lm = random_lm(tiny_config(context=6))
    gen = LmGen(lm, seed=0)
    run(gen, 30)
    assert gen.step_index == 30
    assert all(c.keys.shape[2] == 6 for c in gen.cache)


def test_one_host_sync_per_step(monkeypatch):
    """One `mx.eval` per step, and every array read on the host was evaluated by it."""
    import moshi_mlx.model.generate as generate

    gen = LmGen(random_lm(tiny_config()), seed=0)
    run(gen, 2)  # warm up
    evaluated, syncs, unevaluated_reads = set(), [], []
    real_eval, real_array = mx.eval, np.array

    def counting_eval(*arrays):
        syncs.append(len(arrays))
        evaluated.update(id(a) for a in arrays)
        return real_eval(*arrays)

    def checked_array(x, *args, **kwargs):
        if isinstance(x, mx.array) and id(x) not in evaluated:
            unevaluated_reads.append(x.shape)
        return real_array(x, *args, **kwargs)

    monkeypatch.setattr(mx, "eval", counting_eval)
    monkeypatch.setattr(generate.np, "array", checked_array)
    for t in range(3):
        gen.step_forced(USER[t]) if t == 2 else gen.step(USER[t])
    assert len(syncs) == 3 and unevaluated_reads == []


def test_submitting_the_next_step_before_collecting_gives_the_same_tokens():
    """Step t+1 built while step t computes (its inputs still on the device) samples exactly what `step` does."""
    lm = random_lm(tiny_config())

    def tokens(outs):
        return [(o.text_token, None if o.audio_codes is None else o.audio_codes.tolist()) for o in outs]

    expected = tokens(run(LmGen(lm, seed=3), 30))
    gen = LmGen(lm, seed=3)
    outs, pending = [], gen.submit(USER[0])
    for t in range(1, 30):
        ahead = gen.submit(USER[t])
        outs.append(gen.collect(pending))
        pending = ahead
    outs.append(gen.collect(pending))
    assert tokens(outs) == expected
    first, second = gen.submit(USER[0]), gen.submit(USER[1])
    with pytest.raises(RuntimeError, match="collected in order"):
        gen.collect(second)
    with pytest.raises(RuntimeError, match="before a forced step"):
        gen.step_forced(USER[2], text=1)
    gen.collect(first)


def test_bad_user_codes():
    gen = LmGen(random_lm(tiny_config()))
    with pytest.raises(ValueError, match="expected 8 user codes"):
        gen.step(np.zeros(7))
    for bad in (np.full(8, 64), np.full(8, -1)):  # tiny_config's card is 64
        with pytest.raises(ValueError, match=r"user codes must lie in \[0, 64\)"):
            gen.step(bad)
    assert gen.step_index == 0


@pytest.mark.parametrize("temp", [0.0, 0.8])
def test_compiled_depth_transformer_matches_eager(temp):
    lm = random_lm(tiny_config())

    def tokens(compiled):
        gen = LmGen(lm, temp=temp, temp_text=temp, seed=4, compile=compiled)
        return [(o.text_token, None if o.audio_codes is None else o.audio_codes.tolist()) for o in run(gen, 10)]

    assert tokens(True) == tokens(False)


@pytest.mark.parametrize("temp, top_k", [(0.7, 5), (1.3, 0), (0.8, 64)])
def test_sampler_draws_from_kyutai_distribution(temp, top_k):
    """Kyutai's `sample_token`: softmax(logits / temp) kept to the top k (k=0 or k >= vocab: all), renormalised."""
    from moshi_mlx.model.generate import _sampler

    logits = np.random.default_rng(3).normal(0, 1.5, size=64).astype(np.float32)
    mx.random.seed(0)
    draws = np.array(_sampler(temp, top_k, 64)(mx.broadcast_to(mx.array(logits), (40000, 64))))
    kept = np.argsort(-logits)[:top_k] if 0 < top_k < 64 else np.arange(64)
    expected = np.zeros(64)
    expected[kept] = np.exp(logits[kept] / temp)
    expected /= expected.sum()
    observed = np.bincount(draws, minlength=64) / len(draws)
    assert set(np.flatnonzero(observed)) <= set(kept.tolist())
    np.testing.assert_allclose(observed, expected, atol=0.01)
    assert (np.array(_sampler(0.0, top_k, 64)(mx.array(logits)[None])) == logits.argmax()).all()


def test_text_and_audio_samplers_take_their_own_settings():
    lm = random_lm(tiny_config(), seed=2)
    greedy_audio = LmGen(lm, temp=0, temp_text=3.0, top_k_text=0, seed=5)
    greedy_text = LmGen(lm, temp=3.0, top_k=0, temp_text=0, seed=5)
    text_sampled = audio_sampled = 0
    previous = None
    for t in range(12):
        a, b = greedy_audio.step_forced(USER[t]), greedy_text.step_forced(USER[t])
        text_sampled += a.text_token != a.text_logits.argmax()
        assert b.text_token == b.text_logits.argmax()
        if t:  # the frame of step t is [a0(t-1), a1..a7(t)]
            assert a.audio_codes.tolist() == [previous[0], *a.audio_logits.argmax(-1)[1:]]
            audio_sampled += (b.audio_codes[1:] != b.audio_logits.argmax(-1)[1:]).sum()
        previous = a.audio_logits.argmax(-1)
    assert text_sampled > 0 and audio_sampled > 0


@pytest.mark.parametrize("make_gen", [lambda: LmGen(random_lm(tiny_config()), seed=6),
                                      lambda: PersonaGen(random_lm(tiny_persona_config()), seed=6)],
                         ids=["moshi", "personaplex"])
def test_profiler_gives_the_tokens_of_step_and_times_both_parts(make_gen):
    gen = make_gen()
    first = 1 if isinstance(gen, PersonaGen) else 0  # PersonaPlex's first call computes nothing

    def tokens(outs):
        return [(o.text_token, None if o.audio_codes is None else o.audio_codes.tolist()) for o in outs]

    expected = tokens(run(gen, 9))
    gen.reset()
    profiler = StepProfiler(gen)
    profiled = [profiler.step(USER[t]) for t in range(6)]
    assert tokens(o for o, _, _ in profiled) == expected[:6]
    assert all(temporal > 0 and depth > 0 for _, temporal, depth in profiled[first:])
    assert tokens(gen.step(USER[t]) for t in range(6, 9)) == expected[6:]  # the generator goes on as unprofiled
