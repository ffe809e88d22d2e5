"""Prompt text: pure formatting of activation records, and the versioned templates under prompts/."""
