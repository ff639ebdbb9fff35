"""Model cards (model_cards/*.md, ada_hf.model_card): metadata, budget tables against the model's own quantisation,
published figures only from declared sources, and cards up to date with the renderer."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from ada_hf.latency_scheduler import LatencyScheduler
from ada_hf.model_card import (
    CARD_BUDGETS,
    PUBLISHED_VARIANTS,
    UNVERIFIED,
    render_model_card,
    variant_config,
)
from ada_hf.tiny_model import tiny_config

CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"
CARD_FILES = sorted(CARDS_DIR.glob("*.md"))


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section (up to the next `## `)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in `text`, as rows of cells (header first, separator dropped)."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def numbers(text: str) -> set[str]:
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets are addresses, not figures
    return set(re.findall(r"\d+(?:\.\d+)?", text))


def budget_rows(config, dtype=torch.float16):
    """The model's own quantisation: `u` for each card budget, and `budget_table(dtype)`, from a meta scheduler."""
    with torch.device("meta"):
        scheduler = LatencyScheduler(config)
    units = scheduler.quantize(torch.tensor(CARD_BUDGETS, dtype=torch.float64).to(dtype)).tolist()
    return scheduler, units, scheduler.budget_table(dtype)


def check_budget_tables(text: str, config) -> None:
    """Parse the card's budget tables back and compare every cell with the scheduler's own numbers."""
    scheduler, units, full = budget_rows(config)
    layers = config.scheduler_type == "L"
    total = scheduler.num_layers if layers else scheduler.num_layers * scheduler.num_heads
    run_key = "layers_run" if layers else "head_slots_run"
    body = section(text, "Budgets: what runs")
    shown, everything = tables(body)
    assert shown[0][2] == (f"layers run (of {total})" if layers else f"head slots run (of {total})")
    assert [r[0] for r in shown[1:]] == [f"{b:.2f}" for b in CARD_BUDGETS]
    for cells, u in zip(shown[1:], units):
        row = full[u]
        assert cells[1] == f"{u}/{scheduler.max_units}"
        assert cells[2] == f"{row[run_key]}/{total}"
        assert float(cells[3]) == pytest.approx(row["latency_effective"], abs=5e-5)
        if u:  # the budget buys u units and no fewer: it is at least the lowest budget that buys u
            assert row["min_latency"] is not None and float(cells[0]) >= row["min_latency"] - 1e-3
    assert len(everything) - 1 == len(full) == scheduler.max_units + 1
    for cells, row in zip(everything[1:], full):
        if row["units"] == 0:
            assert cells[0] == "> 0"
        elif row["min_latency"] is None:
            assert cells[0] == "–"
        else:
            assert float(cells[0]) == pytest.approx(row["min_latency"], abs=1e-6)
        assert cells[1] == f"{row['units']}/{scheduler.max_units}"
        assert cells[2] == f"{row['executed_units']}/{scheduler.num_total_units}"
        assert cells[3] == f"{row[run_key]}/{total}"
        assert float(cells[4]) == pytest.approx(row["latency_effective"], abs=5e-5)


def test_one_card_per_published_variant():
    assert sorted(p.stem for p in CARD_FILES) == sorted(PUBLISHED_VARIANTS)


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_card_metadata(path):
    variant = PUBLISHED_VARIANTS[path.stem]
    data = ModelCard.load(path).data
    assert data.license == "llama2"
    assert data.pipeline_tag == "image-text-to-text"
    assert data.library_name == "transformers"
    assert data.base_model == variant.base_model
    assert data.base_model.startswith("liuhaotian/llava-v1.5-")
    assert data.datasets == list(variant.datasets) and "liuhaotian/LLaVA-Instruct-150K" in data.datasets
    assert {"ada-hf", "llava"} <= set(data.tags)
    assert ("adallava" in data.tags) == (variant.scheduler_type is not None)


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_card_content(path):
    variant = PUBLISHED_VARIANTS[path.stem]
    text = ModelCard.load(path).text
    usage = section(text, "How to use")
    for needle in (
        "AutoModelForImageTextToText",
        "AutoProcessor",
        "trust_remote_code=True",
        "revision=",
        "code_revision=",
    ):
        assert needle in usage
    assert ("latency=0.6" in usage) == (variant.scheduler_type is not None)
    assert "vLLM" in section(text, "Limitations") and "TGI" in section(text, "Limitations")
    citation = section(text, "Citation")
    for key in ("@article{zhuoyan2025adallava", "@inproceedings{chen2024efficient", "@article{hu2024illava"):
        assert key in citation
    drops = section(text, "What this variant drops")
    expected = {None: "Nothing", "L": "Whole decoder layers", "H": "attention heads together with r MLP neuron groups"}
    assert expected[variant.scheduler_type] in drops
    assert ("UNVERIFIED" in text) == bool(variant.unverified)
    assert ("ada-hf implements it" in text) == (variant.token_selecting != "none")


def test_h13b_values_are_marked_unverified():
    variant = PUBLISHED_VARIANTS["ada-llava-H-v1.5-13b"]
    assert variant.provenance["num_prefix_layers"] == variant.provenance["scheduler_rank"] == UNVERIFIED
    assert variant.confirmed("config.json of the source").unverified == []


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_budget_table_matches_the_scheduler(path):
    variant = PUBLISHED_VARIANTS[path.stem]
    text = ModelCard.load(path).text
    if variant.scheduler_type is None:
        assert "## Budgets" not in text
        return
    check_budget_tables(text, variant_config(variant))


def test_7b_budgets_match_the_original_fp16_tables():
    """ADALLAVA.md §12-13: at 1.0/0.85/0.75/0.6/0.5, L-7B runs 32/27/24/19/16 layers, H-7B 64/44/32/12/0 units."""
    picks = [CARD_BUDGETS.index(b) for b in (1.0, 0.85, 0.75, 0.6, 0.5)]
    for name, expected in (("ada-llava-L-v1.5-7b", [16, 11, 8, 3, 0]), ("ada-llava-H-v1.5-7b", [64, 44, 32, 12, 0])):
        _, units, _ = budget_rows(variant_config(PUBLISHED_VARIANTS[name]))
        assert [units[i] for i in picks] == expected


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_published_numbers_come_from_declared_sources(path):
    variant = PUBLISHED_VARIANTS[path.stem]
    text = ModelCard.load(path).text
    published = section(text, "Published results")
    assert "Not evaluated by this project" in published
    declared = re.findall(r"^# .*$", text, flags=re.M)  # the title names the model ("LLaVA-1.5 7B")
    declared += [part for claim in variant.claims for part in claim]
    declared += [f"{f.metric} {f.value} {f.setting} {f.source}" for f in variant.figures]
    assert numbers(published) <= numbers(" ".join(declared))
    for figure in variant.figures:
        assert figure.value in published


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_cards_are_up_to_date(path):
    variant = PUBLISHED_VARIANTS[path.stem]
    rendered = render_model_card(variant_config(variant), variant=variant).content
    assert path.read_text(encoding="utf-8") == rendered, "re-run: python convert/render_model_cards.py"


@pytest.mark.parametrize("scheduler_type", ["L", "H", None])
def test_card_for_a_tiny_config(scheduler_type):
    config = tiny_config(
        100,
        97,
        99 if scheduler_type else None,
        scheduler_type=scheduler_type,
        pad_token_id=98,
        num_layers=6,
        num_heads=4,
        scheduler_rank=2,
    )
    card = render_model_card(config, repo_id="someone/tiny-ada", dtype=torch.float32)
    reparsed = ModelCard(card.content)
    assert reparsed.data.license == "llama2" and reparsed.data.library_name == "transformers"
    assert reparsed.data.pipeline_tag == "image-text-to-text"
    assert 'repo_id = "someone/tiny-ada"' in card.text
    if scheduler_type is None:
        assert "## Budgets" not in card.text
        return
    scheduler, _, _ = budget_rows(config)
    body = section(card.text, "Budgets: what runs")
    shown, everything = tables(body)
    assert len(everything) - 1 == scheduler.max_units + 1
    # float32 rows, checked the same way as the published (float16) cards
    full = scheduler.budget_table(torch.float32)
    assert [c[1] for c in everything[1:]] == [f"{r['units']}/{scheduler.max_units}" for r in full]


def test_a_variant_that_contradicts_the_config_is_refused():
    variant = PUBLISHED_VARIANTS["ada-llava-H-v1.5-7b"]
    config = variant_config(PUBLISHED_VARIANTS["ada-llava-L-v1.5-7b"])
    with pytest.raises(ValueError, match="scheduler_type"):
        render_model_card(config, variant=variant)


def test_converter_call_finds_the_published_variant():
    """What the converter calls: no `variant`; the source may be a local folder named after the Hub repo."""
    variant = PUBLISHED_VARIANTS["ada-llava-H-v1.5-13b"]
    config = variant_config(variant)
    card = render_model_card(config, repo_id="me/ada-llava-H-v1.5-13b", source="/data/ada-llava-H-v1.5-13b/")
    assert card.content == render_model_card(config, repo_id="me/ada-llava-H-v1.5-13b", variant=variant).content
    assert "(https://huggingface.co/zhuoyanxu/ada-llava-H-v1.5-13b)" in card.text


def test_fresh_scheduler_on_plain_llava_is_not_presented_as_adallava():
    plain = PUBLISHED_VARIANTS["llava-v1.5-7b"]
    config = variant_config(dataclasses.replace(plain, scheduler_type="L", num_prefix_layers=16))
    card = render_model_card(config, repo_id="me/llava-v1.5-7b-L", source="liuhaotian/llava-v1.5-7b")
    assert card.data.base_model == "liuhaotian/llava-v1.5-7b"
    assert "not a trained AdaLLaVA checkpoint" in card.text
    assert "What the AdaLLaVA authors state" not in card.text
    check_budget_tables(card.text, config)
