"""A reward a tiny random model earns unevenly, so that tests see non-zero advantages."""


def length_reward(prompts, completions, completion_ids=None, **kwargs):
    return [len(ids) / 16 for ids in completion_ids]
