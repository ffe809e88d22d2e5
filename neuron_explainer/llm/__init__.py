"""LLM back ends behind one small protocol (generate + prompt logprobs), plus wrappers."""
