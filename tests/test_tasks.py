"""Tasks as data: specs, the fixed 80/20/test protocol, every source kind through ``datasets``, the
registry of the paper's 62 tasks, and encoding with the chat template and answer-only loss masks."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import pytest

from jaxmerge.tasks import (ALIASES, PAPER, PAPER_62, REGISTRY, Task, TaskError, encode, encode_choices, load_task,
                            make_example, normalize, resolve_task)

def _rows(n, offset=0):
    return [{"prompt": f"what is {i} plus 1 ?", "answer": str(i + 1), "choices": [str(i + 1), str(i + 2)]}
            for i in range(offset, offset + n)]


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


# --- registry ------------------------------------------------------------------------------------------
def test_registry_holds_the_papers_tasks_and_their_locations():
    from jaxmerge.tasks.registry import MOVED
    assert len(PAPER_62) == 62 and set(PAPER_62) <= set(REGISTRY)
    assert set(REGISTRY) == set(PAPER["tasks"])  # + the other tasks of the authors' zero-shot results
    assert {"disaster_response_messages", "fig_qa", "polish_sequence_labeling", "masakhanews_swa",
            "masakhanews_yor"} <= set(REGISTRY) - set(PAPER_62)
    for row, name in ALIASES.items():  # every row name of the authors' zero-shot file resolves
        assert resolve_task(row) is REGISTRY[name] and row in PAPER["tasks"][name]["zero_shot"]
    for name, t in REGISTRY.items():
        kind, _, where = t.source.partition(":")
        assert kind in ("hub", "bigbench", "unknown"), name
        assert t.n_train == 80 or name in ("mmlu_pro", "twitter_complaints")
        authors = PAPER["tasks"][name]["authors_dataset"]
        same = (kind == "bigbench" and authors is None) or (
            kind == "hub" and authors is not None and authors in ([where, t.config], [where]))
        assert same or name in MOVED, (name, t.source, t.config, authors)
        if kind == "bigbench":  # multiple choice ⇔ scored by log-likelihood
            assert t.protocol == ("loglik" if t.choices and name not in ("disfl_qa", "object_counting", "qa_wikidata",
                                                                         "polish_sequence_labeling") else "generate")


def test_offline_hub_task_says_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))  # an empty cache
    import datasets
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(TaskError, match=r"dataset allenai/ai2_arc .*is not cached .*; run with network once"):
        load_task("arc_easy")
    with pytest.raises(TaskError, match="no offline source: BIG-bench generates this task with a program"):
        load_task("boolean_expressions")
    with pytest.raises(TaskError, match="bleugreen/typescript-chunks.*not public"):
        load_task("typescript_chunks")


def test_tasks_list_command(capsys):
    from jaxmerge.cli import main
    assert main(["tasks", "list", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    by = {r["task"]: r for r in table}
    assert len(table) == len(REGISTRY) and sum(r["in_paper_62"] for r in table) == 62
    assert by["sports_understanding"]["protocol"] == "loglik" and by["object_counting"]["protocol"] == "generate"
    assert by["sports_understanding"]["offline"].startswith("no: needs the bigbench==1.0.0 sdist")  # the suite's empty cache
    assert by["boolean_expressions"]["offline"].startswith("no: BIG-bench generates this task with a program")
    assert by["gsm8k"]["paper_zero_shot"] == PAPER["tasks"]["gsm8k"]["zero_shot"]["main"]
    assert main(["tasks", "list"]) == 0 and "sports_understanding" in capsys.readouterr().out


def test_unknown_task_is_a_clear_error():
    with pytest.raises(TaskError, match="not a registry name"):
        load_task("no_such_task_anywhere")


# --- rows → examples -----------------------------------------------------------------------------------------
def test_make_example_field_kinds():
    arc = REGISTRY["arc_easy"]
    row = {"question": "Which is a metal?", "answerKey": "B",
           "choices": {"label": ["A", "B", "C"], "text": ["wood", "iron", "glass"]}}
    ex = make_example(arc, row, None, 0)
    assert ex["answer"] == "B" and ex["choices"] == ["A", "B", "C"]
    assert "A. wood\nB. iron\nC. glass" in ex["prompt"] and ex["prompt"].startswith("Question: Which is a metal?")

    sst2 = REGISTRY["glue_sst2"]
    ex = make_example(sst2, {"sentence": "fine film", "label": 1}, sst2.labels, 0)
    assert ex["answer"] == "positive" and ex["choices"] == ["negative", "positive"]
    with pytest.raises(KeyError, match="outside"):  # GLUE's unlabelled test rows (-1)
        make_example(sst2, {"sentence": "x", "label": -1}, sst2.labels, 0)

    gsm = REGISTRY["gsm8k"]
    ex = make_example(gsm, {"question": "2+2?", "answer": "two and two\n#### 4"}, None, 0)
    assert ex["answer"] == "4" and ex["choices"] is None

    medmcqa = REGISTRY["medmcqa"]
    ex = make_example(medmcqa, {"question": "q", "opa": "a0", "opb": "b0", "opc": "c0", "opd": "d0", "cop": 2}, None, 0)
    assert ex["answer"] == "C" and "C. c0" in ex["prompt"]

    sciq = REGISTRY["sciq"]  # gold listed first in the source: shuffled per example, answer is its letter
    row = {"question": "q", "correct_answer": "gold", "distractor1": "x", "distractor2": "y", "distractor3": "z"}
    letters = {make_example(sciq, row, None, i)["answer"] for i in range(20)}
    assert len(letters) > 1
    ex = make_example(sciq, row, None, 3)
    assert f"{ex['answer']}. gold" in ex["prompt"]

    bb = REGISTRY["hyperbaton"]  # a BIG-bench row as jaxmerge.tasks.bigbench renders it
    ex = make_example(bb, {"input": "Which order?", "target": "a", "targets": ["a"], "choices": ["a", "b"]}, None, 0)
    assert ex == {"prompt": "Which order?", "answer": "a", "choices": ["a", "b"], "golds": ["a"]}


def test_normalize_is_the_papers():
    assert normalize("  Yes. ") == "yes" and normalize("Paris.") == "paris" and normalize("a b") == "a b"


# --- sources through datasets ------------------------------------------------------------------------------
def test_local_jsonl_folder_and_protocol(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", _rows(150))
    _write_jsonl(tmp_path / "test.jsonl", _rows(30, offset=500))
    data = load_task(str(tmp_path))
    assert (len(data.train), len(data.validation), len(data.test)) == (80, 20, 30)
    seen = {r["prompt"] for r in data.train} | {r["prompt"] for r in data.validation}
    assert len(seen) == 100 and not seen & {r["prompt"] for r in data.test}
    assert load_task(str(tmp_path)).train == data.train  # fixed by the seed
    assert load_task(dataclasses.replace(resolve_task(str(tmp_path)), seed=1)).train != data.train


def test_single_file_carves_a_disjoint_test_split(tmp_path):
    _write_jsonl(tmp_path / "all.jsonl", _rows(130))
    data = load_task(str(tmp_path / "all.jsonl"))
    assert (len(data.train), len(data.validation), len(data.test)) == (80, 20, 30)
    assert not {r["prompt"] for r in data.train + data.validation} & {r["prompt"] for r in data.test}


def test_csv_and_spec_file(tmp_path):
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(120):
            w.writerow([f"item {i}", i % 2])
    spec = dict(name="parity_csv", source="json:.", prompt="Is {text} odd?", answer="label", labels=["no", "yes"],
                splits=["train", None, None], max_new_tokens=3)
    with open(tmp_path / "task.json", "w") as f:
        json.dump(spec, f)
    data = load_task(str(tmp_path))
    assert data.task.name == "parity_csv" and len(data.test) == 20
    ex = data.train[0]
    assert ex["choices"] == ["no", "yes"] and ex["answer"] == ("yes" if int(ex["prompt"].split()[2]) % 2 else "no")


def test_too_few_rows_is_an_error(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", _rows(60))
    with pytest.raises(TaskError, match="needs 80 / 20"):
        load_task(str(tmp_path / "train.jsonl"))


def test_bad_fields_are_an_error(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", _rows(130))
    task = Task(name="bad", source=f"json:{tmp_path / 'train.jsonl'}", answer="label", splits=("train", None, None))
    with pytest.raises(TaskError, match="could not be read"):
        load_task(task)


# --- encoding --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    from experiments.world_train import save_tokenizer
    from transformers import AutoTokenizer
    path = tmp_path_factory.mktemp("tok")
    save_tokenizer(["what", "is", "plus", "?", "1", "2", "3", "4", "yes", "no", "be", "brief", "very"], str(path))
    return AutoTokenizer.from_pretrained(str(path))


def test_encode_answer_mask_and_padding(word_tokenizer):
    tok = word_tokenizer
    ex = [{"prompt": "what is 1 plus 2 ?", "answer": "3"}, {"prompt": "1 plus 1 ?", "answer": "2 yes"}]
    b = encode(ex, tok, None)
    v = tok.convert_tokens_to_ids
    eot, asst, pad = v("<|eot|>"), v("<|assistant|>"), tok.pad_token_id
    assert b["tokens"].shape == (2, 16) and b["tokens"].dtype == np.int32
    row = b["tokens"][0]
    n = int(b["attention_mask"][0].sum())
    assert list(row[:n]) == [tok.bos_token_id, v("<|user|>"), *[v(w) for w in "what is 1 plus 2 ?".split()], eot, asst,
                             v("3"), eot]
    assert (row[n:] == pad).all()  # right padding
    # next-token convention: the mask sits on the positions *before* the answer tokens "3", <|eot|>
    assert list(np.nonzero(b["loss_mask"][0])[0]) == [n - 3, n - 2]
    assert list(row[np.nonzero(b["loss_mask"][0])[0] + 1]) == [v("3"), eot]
    assert b["loss_mask"][1].sum() == 3  # "2", "yes", <|eot|>

    g = encode(ex, tok, None, with_answer=False)
    assert g["loss_mask"].sum() == 0 and (g["tokens"][:, -1] == asst).all()  # left padding: prompts end together
    assert g["attention_mask"][1, 0] == 0 and g["attention_mask"][1, -1] == 1

    s = encode(ex, tok, None, system="be brief")
    assert s["tokens"][0, 1] == v("<|system|>") and s["loss_mask"].sum() == b["loss_mask"].sum()


def test_encode_truncates_prompts_from_the_left(word_tokenizer):
    ex = [{"prompt": " ".join(["very"] * 30), "answer": "yes"}]
    with pytest.warns(UserWarning, match="truncated"):
        b = encode(ex, word_tokenizer, 16)
    assert b["tokens"].shape == (1, 16) and b["tokens"][0, 0] == word_tokenizer.bos_token_id
    assert b["loss_mask"].sum() == 2 and b["attention_mask"].sum() == 16


def test_encode_choices_rows(word_tokenizer):
    ex = [{"prompt": "1 plus 1 ?", "answer": "2", "choices": ["2", "3 4", "1"]}]
    b, owner = encode_choices(ex, word_tokenizer)
    assert list(owner) == [0, 0, 0] and list(b["loss_mask"].sum(1)) == [1, 2, 1]
