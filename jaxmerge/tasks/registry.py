"""The paper's 62 target tasks (and the other tasks of the authors' zero-shot results) as data:
public dataset locations, fields and prompts in this project's words.

The hub ids and field names follow the datasets' public cards (hub ids as of 2025); they could not be
checked against the hub from this offline build, so a task whose card changed fails loudly with the
missing field or split named, never with silently different examples. ``jaxmerge/data/paper_tasks.json``
records, per task, the location in the authors' own task file and their Llama-3.1-8B numbers; where
the registry reads another id (a dataset moved on the hub, or a config of the same data) ``MOVED``
says why. Where a benchmark hides its test labels (GLUE, SuperGLUE, …) the validation split is the
test set and the 100 examples come from train, as in the paper.

BIG-bench tasks with a ``task.json`` are read from the ``bigbench`` sdist on PyPI
(``jaxmerge.tasks.bigbench``; fetched once into the user cache, never installed), rendered as BIG-bench
renders them; multiple-choice ones (``target_scores``) are scored by log-likelihood, the others by
generation exact match against any accepted target. The three BIG-bench tasks that are programs
(task.py) there come from the hub copy ``tasksource/bigbench`` and have no offline source.

Prompts of hub tasks end with an instruction on the answer's form, since evaluation is exact match of
a greedy generation (``protocol="generate"``); every task with choices also supports
``protocol="loglik"`` (``dataclasses.replace(REGISTRY[name], protocol="loglik")``). ClassLabel names
(``labels="features"``) are read from the dataset when it loads.
"""

from __future__ import annotations

from .bigbench import source_of
from .spec import Task

NLI3 = ("entailment", "neutral", "contradiction")
LETTERS = "Answer with the letter of the correct option."


def _hub(name, dataset, config=None, *, prompt, answer="label", splits=("train", None, "validation"), **kw) -> Task:
    return Task(name=name, source=f"hub:{dataset}", config=config, prompt=prompt, answer=answer, splits=splits, **kw)


def _bigbench_hub(name, *, suffix="", offline_note, **kw) -> Task:
    """A BIG-bench task that is a program in the sdist: the hub copy (fields inputs/targets)."""
    return Task(name=name, source="hub:tasksource/bigbench", config=name, prompt="{inputs}" + suffix,
                answer="targets", splits=("train", None, "validation"), offline_note=offline_note, **kw)


def _bigbench_json(name, path=None, *, mc: bool, suffix="", **kw) -> Task:
    """A BIG-bench task.json of the sdist (``path`` default: ``name``); ``mc``: target_scores examples."""
    return Task(name=name, source="bigbench:" + source_of(path or name), prompt="{input}" + suffix,
                answer="target", golds="targets", choices="choices", splits=("train", None, None),
                protocol="loglik" if mc else "generate", **kw)


PROGRAM = "BIG-bench generates this task with a program (task.py), so the sdist holds no task.json"


def _glue(name, config, prompt, labels, bench="nyu-mll/glue", test="validation"):
    return _hub(name, bench, config, prompt=prompt + f"\nAnswer with one of: {', '.join(labels)}.",
                labels=labels, splits=("train", None, test))


def _xnli(lang):
    return _hub(f"xnli_{lang}", "facebook/xnli", lang, splits=("train", None, "test"), labels=NLI3,
                prompt="Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? "
                       "Answer with one of: entailment, neutral, contradiction.")


_TASKS = [
    _hub("ade_corpus_v2", "ade-benchmark-corpus/ade_corpus_v2", "Ade_corpus_v2_classification",
         splits=("train", None, None), labels=("not related", "related"),
         prompt="Sentence: {text}\nIs this sentence about an adverse drug effect? Answer related or not related."),
    _hub("anli", "facebook/anli", splits=("train_r1", None, "test_r1"), labels=NLI3,
         prompt="Premise: {premise}\nHypothesis: {hypothesis}\nAnswer with one of: entailment, neutral, contradiction."),
    _hub("aqua_rat", "deepmind/aqua_rat", "tokenized", splits=("train", None, "test"), answer="correct",
         choices=tuple("ABCDE"), choice_texts="options", prompt="{question}\n{choices_list}\n" + LETTERS),
    _hub("arc_challenge", "allenai/ai2_arc", "ARC-Challenge", splits=("train", None, "test"), answer="answerKey",
         choices="choices.label", choice_texts="choices.text", prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("arc_easy", "allenai/ai2_arc", "ARC-Easy", splits=("train", None, "test"), answer="answerKey",
         choices="choices.label", choice_texts="choices.text", prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("banking77", "legacy-datasets/banking77", splits=("train", None, "test"), labels="features",
         prompt="Customer message: {text}\nWhich banking intent is this? Answer with the intent name."),
    _bigbench_hub("boolean_expressions", suffix="\nAnswer True or False.", offline_note=PROGRAM),
    _hub("circa", "google-research-datasets/circa", splits=("train", None, None), answer="goldstandard2",
         labels="features", prompt="Context: {context}\nQuestion: {question-X}\nReply: {answer-Y}\n"
                                   "What does the reply mean? Answer with the meaning label."),
    _hub("clinc_oos", "clinc/clinc_oos", "imbalanced", splits=("train", None, "test"), answer="intent", labels="features",
         prompt="Utterance: {text}\nWhich intent is this? Answer with the intent name."),
    _hub("commonsense_qa", "tau/commonsense_qa", answer="answerKey", choices="choices.label",
         choice_texts="choices.text", prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("cryptonews_articles", "SahandNZ/cryptonews-articles-with-price-momentum-labels",
         splits=("train", None, "test"), labels="features",
         prompt="Article: {text}\nWill the price go up or down after this news? Answer with the label."),
    _bigbench_json("disfl_qa", mc=False, suffix="\nAnswer with a short span from the context."),
    _bigbench_json("elementary_math_qa_question_only", "elementary_math_qa/question_only", mc=True),
    _bigbench_json("formal_fallacies_syllogisms_negation", mc=True),
    _glue("glue_cola", "cola", "Sentence: {sentence}\nIs this sentence grammatically acceptable?",
          ("unacceptable", "acceptable")),
    _glue("glue_mnli", "mnli", "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?",
          NLI3, test="validation_matched"),
    _glue("glue_mrpc", "mrpc", "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nAre they paraphrases?",
          ("not equivalent", "equivalent")),
    _glue("glue_qnli", "qnli", "Question: {question}\nSentence: {sentence}\nDoes the sentence answer the question?",
          ("entailment", "not entailment")),
    _glue("glue_qqp", "qqp", "Question 1: {question1}\nQuestion 2: {question2}\nDo they ask the same thing?",
          ("not duplicate", "duplicate")),
    _glue("glue_sst2", "sst2", "Sentence: {sentence}\nWhat is the sentiment?", ("negative", "positive")),
    _hub("disaster_response_messages", "community-datasets/disaster_response_messages", splits=("train", None, "test"),
         answer="genre", labels=("direct", "news", "social"),
         prompt="Message: {message}\nIs this message direct, news or social? Answer with one of: direct, news, social."),
    _hub("fig_qa", "nightingal3/fig-qa", answer="labels", choices=("1", "2"), choice_texts=("ending1", "ending2"),
         prompt="Figurative phrase: {startphrase}\nWhat does it mean?\n{choices_list}\nAnswer 1 or 2."),
    _hub("gsm8k", "openai/gsm8k", "main", splits=("train", None, "test"), answer="answer",
         answer_pattern=r"####\s*(.+)$", max_new_tokens=256,
         prompt="{question}\nSolve the problem and give only the final number."),
    _bigbench_json("hyperbaton", mc=True),
    _bigbench_json("intersect_geometry", mc=True),  # the union of its subtasks shapes_2 … shapes_6
    _hub("machine_paraphrase_dataset", "jpwahle/machine-paraphrase-dataset", splits=("train", None, "test"),
         labels=("original", "paraphrased"),
         prompt="Text: {text}\nWas this text paraphrased by a machine? Answer original or paraphrased."),
    *[_hub(f"masakhanews_{lang}", "masakhane/masakhanews", lang, splits=("train", None, "test"), labels="features",
           prompt="Headline: {headline}\nArticle: {text}\nWhat is the topic? Answer with one of: business, "
                  "entertainment, health, politics, religion, sports, technology.") for lang in ("swa", "yor")],
    _hub("medmcqa", "openlifescienceai/medmcqa", answer="cop", choices=tuple("ABCD"),
         choice_texts=("opa", "opb", "opc", "opd"), prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("mmlu_combined", "cais/mmlu", "all", splits=("auxiliary_train", None, "test"), answer="answer",
         choices=tuple("ABCD"), choice_texts="choices", prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("mmlu_pro", "TIGER-Lab/MMLU-Pro", splits=("validation", None, "test"), answer="answer",
         n_train=56, n_validation=14,  # the validation split has 70 rows
         choices=tuple("ABCDEFGHIJ"), choice_texts="options", prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _bigbench_json("mnist_ascii", mc=True),
    _bigbench_hub("multistep_arithmetic", suffix="\nAnswer with the number.", offline_note=PROGRAM),
    _bigbench_json("object_counting", mc=False, suffix="\nAnswer with the number."),
    _hub("openmathinstruct_2", "nvidia/OpenMathInstruct-2", splits=("train_1M", None, None),
         answer="expected_answer", max_new_tokens=64, prompt="{problem}\nGive only the final answer."),
    _hub("overruling", "LawInformedAI/overruling", splits=("train", None, None), labels=("no", "yes"),
         prompt="Sentence from a court opinion: {sentence1}\nDoes it overrule a previous case? Answer yes or no."),
    _bigbench_json("polish_sequence_labeling", mc=False),
    _bigbench_json("qa_wikidata", mc=False, suffix="\nAnswer with a short phrase."),
    _hub("qasc", "allenai/qasc", answer="answerKey", choices="choices.label", choice_texts="choices.text",
         prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("quail", "textmachinelab/quail", answer="correct_answer_id", choices=tuple("ABCD"), choice_texts="answers",
         prompt="{context}\nQuestion: {question}\n{choices_list}\n" + LETTERS),
    _hub("race_high", "ehovy/race", "high", splits=("train", None, "test"), answer="answer",
         choices=tuple("ABCD"), choice_texts="options",
         prompt="Article: {article}\nQuestion: {question}\n{choices_list}\n" + LETTERS),
    _bigbench_json("reasoning_about_colored_objects", mc=True),
    _hub("sciq", "allenai/sciq", splits=("train", None, "test"), answer="correct_answer",
         choices=tuple("ABCD"), choice_texts=("correct_answer", "distractor1", "distractor2", "distractor3"),
         shuffle_choices=True, prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _bigbench_json("sports_understanding", mc=True),
    _hub("stackoverflow_questions", "pacovaldez/stackoverflow-questions", splits=("train", None, "valid"),
         labels="features", prompt="Title: {title}\nBody: {body}\nWhat is the quality label of this question?"),
    _glue("super_glue_boolq", "boolq", "Passage: {passage}\nQuestion: {question}?", ("false", "true"),
          bench="aps/super_glue"),
    _hub("super_glue_copa", "aps/super_glue", "copa", answer="label", choices=("1", "2"),
         choice_texts=("choice1", "choice2"), prompt="Premise: {premise}\nWhat is the {question}?\n{choices_list}\n"
                                                     "Answer 1 or 2."),
    _glue("super_glue_rte", "rte", "Premise: {premise}\nHypothesis: {hypothesis}\nIs the hypothesis entailed?",
          ("entailment", "not entailment"), bench="aps/super_glue"),
    _glue("super_glue_wic", "wic", "Sentence 1: {sentence1}\nSentence 2: {sentence2}\n"
          "Is the word '{word}' used with the same meaning in both?", ("false", "true"), bench="aps/super_glue"),
    _glue("super_glue_wsc", "wsc.fixed", "Text: {text}\nDoes '{span2_text}' refer to '{span1_text}'?",
          ("false", "true"), bench="aps/super_glue"),
    _bigbench_json("temporal_sequences", mc=True),
    _hub("toxic_chat", "lmsys/toxic-chat", "toxicchat0124", splits=("train", None, "test"), answer="toxicity",
         labels=("no", "yes"), prompt="User message: {user_input}\nIs this message toxic? Answer yes or no."),
    _bigbench_json("tracking_shuffled_objects", mc=True),  # the union of three_, five_ and seven_objects
    _glue("tweet_eval_hate", "hate", "Tweet: {text}\nIs this tweet hateful?", ("non-hate", "hate"),
          bench="cardiffnlp/tweet_eval", test="test"),
    _hub("tweet_topic_single", "cardiffnlp/tweet_topic_single", splits=("train_coling2022", None, "test_coling2022"),
         labels="features", prompt="Tweet: {text}\nWhat is the topic of this tweet? Answer with the topic name."),
    _hub("twitter_complaints", "ought/raft", "twitter_complaints", splits=("train", None, None), answer="Label",
         labels=("unlabeled", "complaint", "no complaint"), n_train=40, n_validation=10,  # RAFT has 50 labelled rows
         prompt="Tweet: {Tweet text}\nIs this tweet a complaint? Answer complaint or no complaint."),
    _hub("twitter_financial_news_sentiment", "zeroshot/twitter-financial-news-sentiment",
         labels=("bearish", "bullish", "neutral"),
         prompt="Tweet: {text}\nIs the financial sentiment bearish, bullish or neutral?"),
    Task(name="typescript_chunks", source="unknown:bleugreen/typescript-chunks", prompt="{prompt}",
         offline_note="the authors' data is at hub:bleugreen/typescript-chunks, but how they turned it into "
                      "prompts and answers is not public"),
    _hub("unarxive_imrad_clf", "saier/unarXive_imrad_clf", splits=("train", None, "test"),
         labels="features", prompt="Paragraph: {text}\nWhich section is this from? Answer with the section label."),
    _bigbench_json("unit_conversion_si_conversion", "unit_conversion/si_conversion", mc=True),
    _bigbench_hub("web_of_lies", suffix="\nAnswer Yes or No.", offline_note=PROGRAM),
] + [_xnli(lang) for lang in ("de", "en", "es", "fr", "hi", "th")]

REGISTRY: dict[str, Task] = {t.name: t for t in _TASKS}


def _paper() -> dict:
    from importlib.resources import files
    import json
    return json.loads(files("jaxmerge.data").joinpath("paper_tasks.json").read_text())


PAPER = _paper()  # per task: in_paper_62, authors_dataset, zero_shot {row: accuracy}, target_lora (Llama-3.1-8B)
PAPER_62 = tuple(sorted(n for n, t in PAPER["tasks"].items() if t["in_paper_62"]))
# the names the authors' zero-shot results use for some tasks (a hub config name) → the registry's name
ALIASES: dict[str, str] = dict(PAPER["zero_shot_row_aliases"])
# where the registry reads another location than the authors' task file (PAPER[...]["authors_dataset"]), and why
_SCRIPT = "the canonical '{}' is a loading-script dataset, which datasets ≥ 3 no longer runs; {} is its data copy"
MOVED: dict[str, str] = {
    **{f"super_glue_{c}": _SCRIPT.format("super_glue", "aps/super_glue") for c in ("boolq", "copa", "rte", "wic")},
    "super_glue_wsc": _SCRIPT.format("super_glue", "aps/super_glue") + " (its SuperGLUE WSC config is 'wsc.fixed')",
    **{f"xnli_{c}": _SCRIPT.format("xnli", "facebook/xnli") for c in ("de", "en", "es", "fr", "hi", "th")},
    **{n: "the authors read local BIG-bench files; " + PROGRAM + ", so the hub copy tasksource/bigbench is read"
       for n in ("boolean_expressions", "multistep_arithmetic", "web_of_lies")},
    "twitter_complaints": "the authors read a local file; RAFT's twitter_complaints (ought/raft) is its public source",
    "typescript_chunks": "the authors' prompt and answer fields are not public (see its offline_note)",
}
