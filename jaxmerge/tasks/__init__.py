"""Tasks as data, their encoding with the chat template, and the two evaluation protocols.

    data = load_task("arc_easy")                 # or a world task, a task.json, a JSONL folder …
    batch = encode(data.train, tokenizer, 64)    # tokens / attention_mask / loss_mask
    loss = answer_loss(params, config, batch)    # mean cross-entropy on answer tokens
    acc = evaluate_generate(params, config, tokenizer, data.test)   # greedy + exact match
    acc = evaluate_loglik(params, config, tokenizer, data.test)     # argmax summed log-likelihood
"""

from .encode import answer_loss, chat_prefix, encode, encode_choices, token_logprobs
from .evaluate import (evaluate, evaluate_generate, evaluate_loglik, generate_answers, generate_correct,
                       loglik_correct, loglik_scores)
from .load import load_examples, load_task, read_spec, resolve_task
from .registry import REGISTRY
from .spec import PROTOCOLS, Task, TaskData, TaskError, make_example, normalize

__all__ = ["PROTOCOLS", "REGISTRY", "Task", "TaskData", "TaskError", "answer_loss", "chat_prefix", "encode",
           "encode_choices", "evaluate", "evaluate_generate", "evaluate_loglik", "generate_answers",
           "generate_correct", "load_examples", "load_task", "loglik_correct", "loglik_scores", "make_example",
           "normalize", "read_spec", "resolve_task", "token_logprobs"]
