"""randopt_verl.assets.data and its CLIs: determinism, reachability, verl's schema (loaded by verl's RLHFDataset),
converters on small fixture files, clear errors."""

import importlib.util
import json
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from randopt_verl.assets import data as D

ROOT = Path(__file__).resolve().parents[2]


def load(rel):
    path = ROOT / rel
    spec = importlib.util.spec_from_file_location("under_test_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cd = load("reward_fns/countdown.py")
gsm8k_reward = load("reward_fns/gsm8k.py")
math_reward = load("reward_fns/math.py")


def gt_of(row):
    return json.loads(row["reward_model"]["ground_truth"])


# ------------------------------------------------------------------------------------------------ countdown


def test_same_seed_same_rows_and_same_parquet_bytes(tmp_path):
    a = D.generate_countdown(60, seed=7)
    assert a == D.generate_countdown(60, seed=7)
    assert a != D.generate_countdown(60, seed=8)
    D.write_splits(a, tmp_path / "a", 40, 20)
    D.write_splits(D.generate_countdown(60, seed=7), tmp_path / "b", 40, 20)
    for name in ("train.parquet", "test.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    lite = D.generate_countdown_lite(30, seed=7)
    assert lite == D.generate_countdown_lite(30, seed=7) and lite != D.generate_countdown_lite(30, seed=8)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"allow_negative": True, "allow_non_integer": True}, {"min_numbers": 4, "max_numbers": 4, "low": 1, "high": 10}],
    ids=["default", "negative+non-integer", "four-small"],
)
def test_every_generated_target_is_reachable(kwargs):
    rows = D.generate_countdown(200, seed=1, **kwargs)
    lo, hi = kwargs.get("low", 1), kwargs.get("high", 99)
    sizes = set()
    for row in rows:
        gt = gt_of(row)
        target, numbers, solution = gt["target"], gt["numbers"], row["extra_info"]["solution"]
        sizes.add(len(numbers))
        assert kwargs.get("min_numbers", 3) <= len(numbers) <= kwargs.get("max_numbers", 4)
        assert all(lo <= x <= hi and isinstance(x, int) for x in numbers)
        assert target != 0 and abs(target) <= 100
        if not kwargs.get("allow_negative"):
            assert target > 0
        if not kwargs.get("allow_non_integer"):
            assert isinstance(target, int)
        # the stored solution, evaluated by the scorer's own safe evaluator, hits the target exactly...
        value = cd.evaluate_expression(solution)
        assert value == Fraction(target).limit_denominator(10_000)
        assert sorted(cd._literals(cd.parse_expression(solution))) == sorted(numbers)
        # ...and scores full marks through the reward file, read back from the stored JSON string
        out = cd.compute_score("countdown", f"ok</think>\n<answer>{solution}</answer>", row["reward_model"]["ground_truth"])
        assert (out["score"], out["acc"]) == (pytest.approx(1.1), 1.0)
        assert str(target) in row["prompt"][0]["content"] or f"{target:g}" in row["prompt"][0]["content"]
    if not kwargs.get("min_numbers"):
        assert sizes == {3, 4}
    if kwargs.get("allow_negative"):
        assert any(gt_of(r)["target"] < 0 for r in rows) and any(isinstance(gt_of(r)["target"], float) for r in rows)


def test_prompt_style_and_template():
    row = D.generate_countdown(1, seed=0)[0]
    text = row["prompt"][0]["content"]
    assert "<think>" in text and "<answer>" in text and str(gt_of(row)["numbers"]) in text
    custom = D.generate_countdown(1, seed=0, template="N={numbers} T={target}")[0]
    assert custom["prompt"][0]["content"] == f"N={gt_of(row)['numbers']} T={gt_of(row)['target']}"


def test_countdown_lite():
    rows = D.generate_countdown_lite(100, seed=3, template="{a}|{b}|{numbers}|{ops}|{target}")
    for row in rows:
        gt = gt_of(row)
        a, b = gt["numbers"]
        assert row["data_source"] == "countdown_lite" and gt["mode"] == "lite"
        assert row["prompt"][0]["content"] == f"{a}|{b}|{a} and {b}|+ - *|{gt['target']}"
        assert gt["target"] >= 0 and 1 <= a <= 20 and 1 <= b <= 20
        assert gt["target"] in (a + b, a - b, a * b)
        out = cd.compute_score(row["data_source"], row["extra_info"]["solution"], row["reward_model"]["ground_truth"])
        assert (out["score"], out["acc"]) == (1.0, 1.0)
    default = D.generate_countdown_lite(1, seed=0)[0]["prompt"][0]["content"]
    assert default.startswith("Using the numbers ") and "Answer with only the expression." in default


def test_generator_argument_errors():
    with pytest.raises(ValueError, match="low"):
        D.generate_countdown(1, low=-3)
    with pytest.raises(ValueError, match="ops"):
        D.generate_countdown(1, ops="+^")
    with pytest.raises(ValueError, match="min_numbers"):
        D.generate_countdown(1, min_numbers=5, max_numbers=4)


# ------------------------------------------------------------------------------------------------ schema


def test_parquet_schema_is_what_verl_reads(tmp_path):
    out = D.write_splits(D.generate_countdown(12, seed=0), tmp_path, 8, 4)
    table = pq.read_table(out["train"])
    assert table.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert table.schema.field("prompt").type == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert table.schema.field("reward_model").type == pa.struct([("style", pa.string()), ("ground_truth", pa.string())])
    extra = table.schema.field("extra_info").type
    assert extra.get_field_index("split") >= 0 and extra.get_field_index("index") >= 0
    train, test = table.to_pylist(), pq.read_table(out["test"]).to_pylist()
    assert {r["extra_info"]["split"] for r in train} == {"train"} and {r["extra_info"]["split"] for r in test} == {"test"}
    assert [r["extra_info"]["index"] for r in test] == list(range(8, 12))  # source indices are kept
    assert all(r["reward_model"]["style"] == "rule" for r in train)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["Using the numbers 1 2 3 create an equation"] * 10, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return hf


def test_verl_rlhf_dataset_reads_the_files(tmp_path):
    pytest.importorskip("verl")
    pytest.importorskip("datasets")
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    full = D.write_splits(D.generate_countdown(6, seed=0), tmp_path / "cd", 4, 2)
    lite = D.write_splits(D.generate_countdown_lite(6, seed=0), tmp_path / "lite", 4, 2)
    config = OmegaConf.create({"max_prompt_length": 512, "filter_overlong_prompts": True,
                               "filter_overlong_prompts_workers": 1, "cache_dir": str(tmp_path / "cache")})
    ds = RLHFDataset([full["train"], lite["test"]], _tiny_tokenizer(), config)
    assert len(ds) == 6  # nothing filtered as overlong: the chat template applied to every prompt
    for i, source in [(0, "countdown"), (5, "countdown_lite")]:
        item = ds[i]
        assert item["data_source"] == source
        assert item["raw_prompt"][0]["role"] == "user"
        # exactly what verl's reward manager hands to compute_score
        gt = item["reward_model"]["ground_truth"]
        solution = item["extra_info"]["solution"]
        response = solution if source == "countdown_lite" else f"<answer>{solution}</answer>"
        out = cd.compute_score(item["data_source"], response, gt, extra_info=item["extra_info"])
        assert out["acc"] == 1.0
    assert ds[5]["index"] == 5  # extra_info.index -> verl's "index" (lite test split keeps source indices 4, 5)


# ------------------------------------------------------------------------------------------------ converters


def _write(path, rows, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


GSM8K_ROWS = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24.\nIn total 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "A car costs $1,000. What does it cost?", "answer": "It costs 1,000 dollars.\n#### 1,000"},
    {"question": "What is 2 - 7?", "answer": "#### -5"},
]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_convert_gsm8k(tmp_path, fmt):
    rows = D.convert_gsm8k(_write(tmp_path / f"gsm8k.{fmt}", GSM8K_ROWS, fmt), split="test")
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["72", "1000", "-5"]
    assert rows[0]["data_source"] == "openai/gsm8k"
    assert rows[0]["prompt"][0]["content"].startswith("Natalia") and '"####"' in rows[0]["prompt"][0]["content"]
    assert rows[1]["extra_info"] == {"split": "test", "index": 1, "question": GSM8K_ROWS[1]["question"],
                                     "answer": GSM8K_ROWS[1]["answer"]}
    out = gsm8k_reward.compute_score(rows[1]["data_source"], "So #### $1,000", rows[1]["reward_model"]["ground_truth"])
    assert out["acc"] == 1.0


def test_convert_math(tmp_path):
    records = [
        {"problem": "What is 1/2 + 0?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}",
         "level": "Level 1", "type": "Algebra"},
        {"problem": "Compute 2+3.", "solution": "We get $\\boxed{5}$. Indeed \\boxed{5}."},  # no answer column value
    ]
    rows = D.convert_math(_write(tmp_path / "math.jsonl", records, "jsonl"))
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["\\frac{1}{2}", "5"]
    assert rows[0]["data_source"] == "lighteval/MATH" and "\\boxed{}" in rows[0]["prompt"][0]["content"]
    assert rows[0]["extra_info"]["level"] == "Level 1" and rows[1]["extra_info"]["level"] == ""  # one schema
    # solution-only file (no answer column at all), as parquet
    rows = D.convert_math(_write(tmp_path / "sol.parquet", [{"problem": "p", "solution": "\\boxed{\\frac{a}{b}}"}], "parquet"))
    assert rows[0]["reward_model"]["ground_truth"] == "\\frac{a}{b}"
    assert math_reward.compute_score("x", "\\boxed{\\dfrac{a}{b}}", rows[0]["reward_model"]["ground_truth"])["acc"] == 1.0
    D.write_parquet(rows, tmp_path / "out.parquet")


def test_convert_countdown_tinyzero_and_numbers(tmp_path):
    tinyzero = [{"target": 24, "nums": [3, 8, 1]}, {"target": -5, "nums": [2, 7]}]
    rows = D.convert_countdown(_write(tmp_path / "cd.parquet", tinyzero, "parquet"))
    assert [gt_of(r) for r in rows] == [{"target": 24, "numbers": [3, 8, 1]}, {"target": -5, "numbers": [2, 7]}]
    other = [{"target": 2.5, "numbers": [5, 2]}, {"target": "7", "numbers": "[3, 4]"}, {"target": 6.0, "numbers": [2, 3]}]
    rows = D.convert_countdown(_write(tmp_path / "cd.json", other, "json"))
    assert [gt_of(r)["target"] for r in rows] == [2.5, 7, 6]  # non-integer kept, never dropped
    assert "equals 2.5" in rows[0]["prompt"][0]["content"] and "equals 6." in rows[2]["prompt"][0]["content"]
    assert cd.compute_score("countdown", "t</think>\n<answer>5 / 2</answer>", rows[0]["reward_model"]["ground_truth"])["acc"] == 1.0


def test_json_layouts(tmp_path):
    (tmp_path / "cols.json").write_text(json.dumps({"target": [24, 10], "nums": [[3, 8, 1], [5, 5]]}))
    assert len(D.convert_countdown(tmp_path / "cols.json")) == 2
    (tmp_path / "lines.json").write_text('{"target": 24, "nums": [3, 8, 1]}\n{"target": 10, "nums": [5, 5]}\n')
    assert len(D.convert_countdown(tmp_path / "lines.json")) == 2
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": [{"target": 24, "nums": [3, 8, 1]}]}))
    assert len(D.convert_countdown(tmp_path / "wrapped.json")) == 1
    assert len(D.convert_countdown([{"target": 24, "nums": [3, 8, 1]}])) == 1  # in-memory records


def test_clear_errors(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [{"question": "q", "solution": "#### 1"}], "jsonl")
    with pytest.raises(ValueError, match=r"missing column 'answer'.*columns found: \['question', 'solution'\]"):
        D.convert_gsm8k(path)
    path = _write(tmp_path / "bad.parquet", [{"target": 3, "values": [1, 2]}], "parquet")
    with pytest.raises(ValueError, match=r"missing column 'nums' or 'numbers'.*columns found: \['target', 'values'\]"):
        D.convert_countdown(path)
    with pytest.raises(ValueError, match=r"missing column 'answer' or 'solution'"):
        D.convert_math([{"problem": "p"}])
    with pytest.raises(ValueError, match="no '#### <number>'"):
        D.convert_gsm8k([{"question": "q", "answer": "no final answer"}])
    with pytest.raises(ValueError, match="non-negative integers"):
        D.convert_countdown([{"target": 3, "nums": [1.5, 2]}])
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        D.read_records(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="holds no records"):
        D.convert_gsm8k(_write(tmp_path / "empty.json", [], "json"))
    with pytest.raises(ValueError, match="exceeds the 5 rows"):
        D.write_splits(D.generate_countdown_lite(5), tmp_path / "o", 4, 2)


# ------------------------------------------------------------------------------------------------ CLIs


def test_cli_make_countdown(tmp_path, capsys):
    cli = load("scripts/make_countdown.py")
    out = cli.main(["--out-dir", str(tmp_path / "full"), "--n-train", "5", "--n-val", "3", "--seed", "2"])
    assert pq.read_table(out["train"]).num_rows == 5 and pq.read_table(out["test"]).num_rows == 3
    assert "wrote" in capsys.readouterr().out
    out = cli.main(["--lite", "--out-dir", str(tmp_path / "lite"), "--n-train", "4", "--n-val", "2", "--template", "{a} {b} {target}"])
    row = pq.read_table(out["train"]).to_pylist()[0]
    assert row["data_source"] == "countdown_lite" and row["prompt"][0]["content"].count(" ") == 2


def test_cli_convert_dataset(tmp_path, capsys):
    cli = load("scripts/convert_dataset.py")
    train = _write(tmp_path / "train.jsonl", GSM8K_ROWS, "jsonl")
    test = _write(tmp_path / "test.parquet", GSM8K_ROWS[:2], "parquet")
    out = cli.main(["gsm8k", "--train", str(train), "--val", str(test), "--out-dir", str(tmp_path / "o1")])
    assert (out["n_train"], out["n_val"]) == (3, 2)
    assert {r["extra_info"]["split"] for r in pq.read_table(out["test"]).to_pylist()} == {"test"}
    out = cli.main(["gsm8k", "--input", str(train), "--n-train", "2", "--out-dir", str(tmp_path / "o2")])
    assert (out["n_train"], out["n_val"]) == (2, 1)
    assert "reward_fns/gsm8k.py" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["gsm8k", "--out-dir", str(tmp_path / "o3")])


def test_countdown_lite_distinct():
    """distinct=True: no prompt twice (so the demo's selection and test splits share none), same seed same rows,
    and a request beyond the distinct problems fails before drawing."""
    rows = D.generate_countdown_lite(900, seed=0, distinct=True)
    prompts = [r["prompt"][0]["content"] for r in rows]
    assert len(set(prompts)) == len(prompts) == 900
    assert rows == D.generate_countdown_lite(900, seed=0, distinct=True)
    for row in rows:
        gt = gt_of(row)
        out = cd.compute_score(row["data_source"], row["extra_info"]["solution"], row["reward_model"]["ground_truth"])
        assert out["acc"] == 1.0 and gt["target"] >= 0
    repeats = [r["prompt"][0]["content"] for r in D.generate_countdown_lite(900, seed=0)]
    assert len(set(repeats)) < 900  # the default draws independently: what distinct=True exists to prevent
    with pytest.raises(ValueError, match="distinct countdown-lite problems"):
        D.generate_countdown_lite(10, low=1, high=2, ops="+", distinct=True)
