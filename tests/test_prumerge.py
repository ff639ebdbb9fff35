"""PruMerge / PruMerge+ token selection (ADALLAVA.md 10.3): the selection and merge, per-image counts in generate."""

import pytest
import torch
import torch.nn.functional as F

from ada_hf.vision_merging import prumerge
from conftest import IMAGE_ID, left_pad
from test_illava_vit import vit_model
from test_llavolta import IMAGE_TOKENS, pixels, prompt


def reference(features, q, k, plus):
    """PruMerge written out token by token, as its description reads."""
    n, c = features.shape
    attention = F.softmax(q[0] @ k.T / c**0.5, dim=-1)[1:]
    q1, q3 = torch.quantile(attention, 0.25), torch.quantile(attention, 0.75)
    ratio = float((attention > q3 + 1.5 * (q3 - q1)).sum()) / n
    kept = attention.topk(int(n * ratio)).indices.tolist()
    if plus and ratio > 0:
        kept += [i for i in range(0, n - 1, max(int(int(1 / ratio) / 3), 1)) if i not in kept]
    keys = F.normalize(k[1:], dim=-1)
    rows = []
    for i in kept:
        others = [j for j in range(n) if j != i]
        sims = torch.stack([keys[i] @ keys[j] for j in others])
        nearest = [others[j] for j in sims.topk(min(32, n - 1)).indices.tolist()]
        rows.append(features[i] + sum(features[j] * attention[j] for j in nearest))
    rest = [j for j in range(n) if j not in kept]
    rows.append(sum(features[j] * attention[j] for j in rest))
    return torch.stack(rows)


@pytest.mark.parametrize("plus", [False, True])
def test_selection_and_merge_match_the_description(plus):
    g = torch.Generator().manual_seed(0)
    n, c = 64, 8
    features, q, k = (
        torch.randn(1, n, c, generator=g),
        torch.randn(1, n + 1, c, generator=g),
        torch.randn(1, n + 1, c, generator=g),
    )
    q[0, 0] *= 6  # a peaked CLS row, so some patches are outliers
    ours = prumerge(features, q, k, plus)[0]
    ref = reference(features[0], q[0], k[0], plus)
    assert ours.shape == ref.shape and ours.shape[0] > 1
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["prumerge", "prumerge+"])
def test_generate_gives_each_image_its_own_count(mode):
    model = vit_model("L")
    rows = [prompt(0, 3, 4), prompt(1, 1, 2)]
    ids, mask = left_pad(rows)
    pix = pixels(2) * torch.tensor([1.0, 3.0])[:, None, None, None]  # different images, different counts
    kw = dict(max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_logits=True,
              token_selecting=mode, latency=0.8)  # fmt: skip
    batch = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, **kw)
    uncached = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, use_cache=False, **kw)
    assert torch.equal(batch.sequences, uncached.sequences)
    counts = (batch.sequences == IMAGE_ID).sum(1).tolist()
    features = model.model.get_image_features(pix, token_selecting=mode).pooler_output
    assert counts == [f.shape[0] for f in features] and all(c < IMAGE_TOKENS for c in counts)
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=row[None], pixel_values=pix[i : i + 1], **kw)
        for a, b in zip(batch.logits, alone.logits):
            torch.testing.assert_close(a[i], b[0], atol=1e-5, rtol=0)


def test_refusals():
    model = vit_model()
    with pytest.raises(ValueError, match="use generate"):
        model(input_ids=prompt()[None], pixel_values=pixels(), token_selecting="prumerge")
    with pytest.raises(ValueError, match="cannot be combined with iLLaVA vision merging"):
        model(input_ids=prompt()[None], pixel_values=pixels(), token_selecting="prumerge", enable_illava_vit=True,
              illava_vit_k=1, illava_vit_r=2)  # fmt: skip
    with pytest.raises(ValueError, match="LLaVolta"):
        model(input_ids=prompt()[None], pixel_values=pixels(), token_selecting="prumerge+",
              llavolta_grouping="avgpool1d", llavolta_stride=4)  # fmt: skip
    with pytest.raises(ValueError, match="token_selecting='fastv' is not supported"):
        model(input_ids=prompt()[None], pixel_values=pixels(), token_selecting="fastv")
