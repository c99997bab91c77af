"""Tasks as data, their encoding with the chat template, and the two evaluation protocols.

    data = load_task("arc_easy")                 # or a world task, a task.json, a JSONL folder …
    batch = encode(data.train, tokenizer, 64)    # tokens / attention_mask / loss_mask
    loss = answer_loss(params, config, batch)    # mean cross-entropy on answer tokens
    acc = evaluate_generate(params, config, tokenizer, data.test)   # greedy + exact match
    acc = evaluate_loglik(params, config, tokenizer, data.test)     # argmax summed log-likelihood
    rows = predictions(params, config, tokenizer, data.test, "loglik")   # what was scored, per example
"""

from .choices import shared_prompt_scores
from .encode import (answer_logprobs, answer_loss, chat_prefix, chat_text, concat_batches, encode, encode_choices,
                     token_logprobs)
from .evaluate import (evaluate, evaluate_generate, evaluate_loglik, generate_answers, generate_correct,
                       loglik_correct, loglik_scores, per_choice_scores, predictions)
from .load import bigbench_task, load_examples, load_task, read_spec, resolve_task
from .registry import ALIASES, PAPER, PAPER_62, REGISTRY
from .spec import PROTOCOLS, Task, TaskData, TaskError, make_example, normalize

__all__ = ["ALIASES", "PAPER", "PAPER_62", "PROTOCOLS", "REGISTRY", "Task", "TaskData", "TaskError", "answer_logprobs",
           "answer_loss", "bigbench_task", "chat_prefix", "chat_text", "concat_batches", "encode", "encode_choices",
           "evaluate", "evaluate_generate", "evaluate_loglik", "generate_answers", "generate_correct",
           "load_examples", "load_task", "loglik_correct", "loglik_scores", "make_example", "normalize",
           "per_choice_scores", "predictions", "read_spec", "resolve_task", "shared_prompt_scores", "token_logprobs"]
