"""KV-cache decoding: equal to recomputation, batching equal to one prompt at a time, token sets and stops."""

from __future__ import annotations

import pytest
import torch

from qwen_min import generate, load_pretrained, preset_model
from qwen_min.tokenizer import tiny_tokenizer

from .conftest import tiny_model

PROMPTS = [[5, 17, 33, 2, 8, 91, 40], [12, 3], [77, 1, 9, 64, 22]]


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_cache_equals_full_recomputation(kv_heads):
    model = tiny_model(num_key_value_heads=kv_heads, std=0.5)
    cached = generate(model, PROMPTS, 12, pad_id=0)
    recomputed = generate(model, PROMPTS, 12, pad_id=0, use_cache=False)
    assert cached == recomputed
    assert all(len(row) == 12 for row in cached)


def test_batch_equals_each_prompt_alone():
    model = tiny_model(std=0.5)
    batched = generate(model, PROMPTS, 10, pad_id=0)
    alone = [generate(model, [p], 10, pad_id=0)[0] for p in PROMPTS]
    assert batched == alone


def test_cache_logits_equal_full_forward():
    model = tiny_model(std=0.5)
    from qwen_min import KVCache
    ids = torch.randint(0, 97, (2, 14))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, 2, 14, torch.float32, "cpu")
        parts = [model(ids[:, :6], cache=cache), model(ids[:, 6:10], cache=cache),
                 *(model(ids[:, t:t + 1], cache=cache) for t in range(10, 14))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_allowed_tokens_only():
    model = tiny_model(std=0.5)
    allowed = [3, 7, 11, 60]
    out = generate(model, PROMPTS, 15, pad_id=0, allowed_token_ids=allowed)
    assert all(t in allowed for row in out for t in row)
    # the restricted head picks what the full head would pick among the allowed rows
    with torch.no_grad():
        logits = model(torch.tensor([PROMPTS[0]]), last_only=True)[0, -1]
    assert out[0][0] == allowed[int(logits[allowed].argmax())]


def test_stop_token_ends_each_row_and_is_excluded():
    model = tiny_model(std=0.5)
    free = generate(model, PROMPTS, 8, pad_id=0)
    stop = free[1][3]
    out = generate(model, PROMPTS, 8, pad_id=0, stop_ids=[stop])
    for row_free, row in zip(free, out):
        cut = row_free.index(stop) if stop in row_free else len(row_free)
        assert row == row_free[:cut]


def test_sampling_follows_the_generator():
    model = tiny_model(std=0.5)
    a = generate(model, PROMPTS, 10, pad_id=0, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = generate(model, PROMPTS, 10, pad_id=0, temperature=1.0, generator=torch.Generator().manual_seed(1))
    c = generate(model, PROMPTS, 10, pad_id=0, temperature=1.0, generator=torch.Generator().manual_seed(2))
    assert a == b != c


def test_tiny_random_preset_is_fixed_and_matches_its_tokenizer():
    a, b = preset_model("tiny-random"), load_pretrained("tiny-random")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    tok = tiny_tokenizer()
    assert a.config.vocab_size >= tok.vocab_size
    prompt = tok.encode("0.25,1.50;0.27,1.47;")
    out = generate(a, [prompt], 6, pad_id=tok.pad_id, allowed_token_ids=[tok.token_id(c) for c in "0123456789.,;"])
    assert set(tok.decode(out[0])) <= set("0123456789.,;")


def test_empty_prompt_refused():
    with pytest.raises(ValueError, match="at least one token"):
        generate(tiny_model(), [[1, 2], []], 3, pad_id=0)


def test_masked_greedy_equals_transformers_generate(tmp_path):
    """Grammar off, mask only: our tokens equal transformers' generate() with a masking logits processor."""
    transformers = pytest.importorskip("transformers")
    from qwen_min import save_pretrained

    model = tiny_model(std=0.5)
    save_pretrained(model, tmp_path)
    hf = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    allowed = [3, 7, 11, 60, 61, 62, 90]

    class Mask(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            keep = torch.full_like(scores, float("-inf"))
            keep[:, allowed] = 0
            return scores + keep

    ids, mask = torch.tensor([PROMPTS[0], [0, 0] + PROMPTS[2]]), torch.tensor([[1] * 7, [0, 0] + [1] * 5])
    theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=15, do_sample=False,
                         logits_processor=transformers.LogitsProcessorList([Mask()]), pad_token_id=0,
                         eos_token_id=None)[:, 7:].tolist()
    ours = generate(model, [PROMPTS[0], PROMPTS[2]], 15, pad_id=0, allowed_token_ids=allowed)
    assert ours == theirs


def test_prefixes_and_repeats_are_prefilled_once():
    from qwen_min.generate import share_prefixes

    long = [5, 17, 33, 2, 8, 91, 40, 7, 7]
    prompts = [long[:4], long, [12, 3], long, long[:7], [12, 3, 4]]
    # long (row 1) is computed; its start serves rows 0 and 4, its copy row 3; [12, 3] is [12, 3, 4]'s start
    assert share_prefixes(prompts) == {0: 1, 3: 1, 4: 1, 2: 5}
    model = tiny_model(std=0.5)
    together = generate(model, prompts, 10, pad_id=0)
    alone = [generate(model, [p], 10, pad_id=0, ragged_prefill=False) for p in prompts]
    assert together == [a[0] for a in alone]
    plain = generate(model, [long, [12, 3, 4]], 10, pad_id=0)
    # the prefill costs what the two computed prompts cost; the six rows decode together afterwards
    assert together.forward_calls == plain.forward_calls
