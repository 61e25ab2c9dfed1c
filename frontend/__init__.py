"""Banyan's frontend language: SGLang's programming model on the DeepSeek-V4 chat format.

    import banyan.frontend as sgl

    @sgl.function
    def qa(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=64, thinking=True))

    sgl.set_default_backend(sgl.RuntimeEndpoint("http://localhost:30000"))
    state = qa.run(question="...")
    state["answer"], state["answer_reasoning"]

Programs written for SGLang run unchanged with only the import swapped; role blocks render with
the V4 encoding, and `gen` adds V4 reasoning and tool use.
"""

from .api import (assistant, assistant_begin, assistant_end, flush_cache, function, gen, gen_int, gen_string,
                  get_server_info, select, set_default_backend, system, system_begin, system_end, user, user_begin,
                  user_end)
from .backends import Backend, LocalEngine, OpenAI, RuntimeEndpoint
from .choices import (ChoicesDecision, ChoicesSamplingMethod, greedy_token_selection, token_length_normalized,
                      unconditional_likelihood_normalized)
from .config import global_config
from .errors import BackendError, UnsupportedFeatureError
from .program import Function
from .reasoning import branches, majority_vote, self_consistency
from .sampling import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR
from .state import ForkGroup, ProgramState
from .tools import Tool

__all__ = [
    "Backend", "BackendError", "ChoicesDecision", "ChoicesSamplingMethod", "ForkGroup", "Function", "LocalEngine",
    "OpenAI", "ProgramState", "REGEX_BOOL", "REGEX_FLOAT", "REGEX_INT", "REGEX_STR", "RuntimeEndpoint", "Tool",
    "UnsupportedFeatureError", "assistant", "assistant_begin", "assistant_end", "branches", "flush_cache", "function",
    "gen", "gen_int", "gen_string", "get_server_info", "global_config", "greedy_token_selection", "majority_vote",
    "select", "self_consistency", "set_default_backend", "system", "system_begin", "system_end",
    "token_length_normalized", "unconditional_likelihood_normalized", "user", "user_begin", "user_end",
]
