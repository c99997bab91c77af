"""The paper's 62 target tasks as data: public dataset ids, fields and prompts in this project's words.

The ids and field names follow the datasets' public cards (hub ids as of 2025); they could not be
checked against the hub from this offline build, so a task whose card changed fails loudly with the
missing field or split named, never with silently different examples. BIG-bench tasks come from
``tasksource/bigbench`` (fields ``inputs``, ``targets``, ``multiple_choice_targets``; splits train and
validation, the latter used as test). Where a benchmark hides its test labels (GLUE, SuperGLUE, …)
the validation split is the test set and the 100 examples come from train, as in the paper.

Prompts end with an instruction on the answer's form, since evaluation is exact match of a greedy
generation (``protocol="generate"``); every task with choices also supports ``protocol="loglik"``
(``dataclasses.replace(REGISTRY[name], protocol="loglik")``). ClassLabel names (``labels="features"``)
are read from the dataset when it loads.
"""

from __future__ import annotations

from .spec import Task

NLI3 = ("entailment", "neutral", "contradiction")
LETTERS = "Answer with the letter of the correct option."


def _hub(name, dataset, config=None, *, prompt, answer="label", splits=("train", None, "validation"), **kw) -> Task:
    return Task(name=name, source=f"hub:{dataset}", config=config, prompt=prompt, answer=answer, splits=splits, **kw)


def _bigbench(name, config=None, *, suffix="", **kw) -> Task:
    return Task(name=name, source="hub:tasksource/bigbench", config=config or name,
                prompt="{inputs}" + suffix, answer="targets", splits=("train", None, "validation"), **kw)


def _bigbench_mc(name, config=None, **kw) -> Task:
    return _bigbench(name, config, choices="multiple_choice_targets",
                     suffix="\nAnswer with one of the listed options, exactly as written.", **kw)


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
    _hub("aqua_rat", "deepmind/aqua_rat", "raw", splits=("train", None, "test"), answer="correct",
         choices=tuple("ABCDE"), choice_texts="options", prompt="{question}\n{choices_list}\n" + LETTERS),
    _hub("arc_challenge", "allenai/ai2_arc", "ARC-Challenge", splits=("train", None, "test"), answer="answerKey",
         choices="choices.label", choice_texts="choices.text", prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("arc_easy", "allenai/ai2_arc", "ARC-Easy", splits=("train", None, "test"), answer="answerKey",
         choices="choices.label", choice_texts="choices.text", prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("banking77", "PolyAI/banking77", splits=("train", None, "test"), labels="features",
         prompt="Customer message: {text}\nWhich banking intent is this? Answer with the intent name."),
    _bigbench("boolean_expressions", suffix="\nAnswer True or False."),
    _hub("circa", "google-research-datasets/circa", splits=("train", None, None), answer="goldstandard2",
         labels="features", prompt="Context: {context}\nQuestion: {question-X}\nReply: {answer-Y}\n"
                                   "What does the reply mean? Answer with the meaning label."),
    _hub("clinc_oos", "clinc/clinc_oos", "plus", splits=("train", None, "test"), answer="intent", labels="features",
         prompt="Utterance: {text}\nWhich intent is this? Answer with the intent name."),
    _hub("commonsense_qa", "tau/commonsense_qa", answer="answerKey", choices="choices.label",
         choice_texts="choices.text", prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("cryptonews_articles", "SahandNZ/cryptonews-articles-with-price-momentum-labels",
         splits=("train", None, "test"), labels="features",
         prompt="Article: {text}\nWill the price go up or down after this news? Answer with the label."),
    _bigbench("disfl_qa", suffix="\nAnswer with a short span from the context."),
    _bigbench_mc("elementary_math_qa_question_only", "elementary_math_qa"),
    _bigbench_mc("formal_fallacies_syllogisms_negation"),
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
    _hub("gsm8k", "openai/gsm8k", "main", splits=("train", None, "test"), answer="answer",
         answer_pattern=r"####\s*(.+)$", max_new_tokens=256,
         prompt="{question}\nSolve the problem and give only the final number."),
    _bigbench_mc("hyperbaton"),
    _bigbench_mc("intersect_geometry"),
    _hub("machine_paraphrase_dataset", "jpwahle/machine-paraphrase-dataset", splits=("train", None, "test"),
         labels=("original", "paraphrased"),
         prompt="Text: {text}\nWas this text paraphrased by a machine? Answer original or paraphrased."),
    _hub("medmcqa", "openlifescienceai/medmcqa", answer="cop", choices=tuple("ABCD"),
         choice_texts=("opa", "opb", "opc", "opd"), prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("mmlu_combined", "cais/mmlu", "all", splits=("auxiliary_train", None, "test"), answer="answer",
         choices=tuple("ABCD"), choice_texts="choices", prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("mmlu_pro", "TIGER-Lab/MMLU-Pro", splits=("validation", None, "test"), answer="answer",
         n_train=56, n_validation=14,  # the validation split has 70 rows
         choices=tuple("ABCDEFGHIJ"), choice_texts="options", prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _bigbench("mnist_ascii", suffix="\nAnswer with the digit."),
    _bigbench("multistep_arithmetic", suffix="\nAnswer with the number."),
    _bigbench("object_counting", suffix="\nAnswer with the number."),
    _hub("openmathinstruct_2", "nvidia/OpenMathInstruct-2", splits=("train_1M", None, None),
         answer="expected_answer", max_new_tokens=64, prompt="{problem}\nGive only the final answer."),
    _hub("overruling", "LawInformedAI/overruling", splits=("train", None, None), labels=("no", "yes"),
         prompt="Sentence from a court opinion: {sentence1}\nDoes it overrule a previous case? Answer yes or no."),
    _bigbench("qa_wikidata", suffix="\nAnswer with a short phrase."),
    _hub("qasc", "allenai/qasc", answer="answerKey", choices="choices.label", choice_texts="choices.text",
         prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _hub("quail", "textmachinelab/quail", answer="correct_answer_id", choices=tuple("ABCD"), choice_texts="answers",
         prompt="{context}\nQuestion: {question}\n{choices_list}\n" + LETTERS),
    _hub("race_high", "ehovy/race", "high", splits=("train", None, "test"), answer="answer",
         choices=tuple("ABCD"), choice_texts="options",
         prompt="Article: {article}\nQuestion: {question}\n{choices_list}\n" + LETTERS),
    _bigbench_mc("reasoning_about_colored_objects"),
    _hub("sciq", "allenai/sciq", splits=("train", None, "test"), answer="correct_answer",
         choices=tuple("ABCD"), choice_texts=("correct_answer", "distractor1", "distractor2", "distractor3"),
         shuffle_choices=True, prompt="Question: {question}\n{choices_list}\n" + LETTERS),
    _bigbench_mc("sports_understanding"),
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
    _bigbench_mc("temporal_sequences"),
    _hub("toxic_chat", "lmsys/toxic-chat", "toxicchat0124", splits=("train", None, "test"), answer="toxicity",
         labels=("no", "yes"), prompt="User message: {user_input}\nIs this message toxic? Answer yes or no."),
    _bigbench_mc("tracking_shuffled_objects"),
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
    Task(name="typescript_chunks", source="unknown:typescript_chunks",
         prompt="{prompt}"),  # the paper cites no public id for this curated task
    _hub("unarxive_imrad_clf", "saier/unarXive_imrad_clf", splits=("train", None, "test"),
         labels="features", prompt="Paragraph: {text}\nWhich section is this from? Answer with the section label."),
    _bigbench_mc("unit_conversion_si_conversion", "unit_conversion"),
    _bigbench_mc("web_of_lies"),
] + [_xnli(lang) for lang in ("de", "en", "es", "fr", "hi", "th")]

REGISTRY: dict[str, Task] = {t.name: t for t in _TASKS}
