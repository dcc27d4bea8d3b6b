"""Run scripts.chat_sft (argv passed through) on a fixed toy mixture, for the rank-normalisation test in
tests/test_chat_sft.py: one prompt too long to leave any target token, the others of different lengths."""

import sys


def conv(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def toy_tasks():
    rows = [conv("tell me " * 20, "never seen"), conv("hi", "hello there, friend"), conv("yo", "ok"),
            conv("what is two plus two?", "four"), conv("name a colour", "green, or maybe blue")]
    return [("toy", rows * 2)], [("val", rows[1:])]


if __name__ == "__main__":
    from scripts.chat_sft import main
    main(sys.argv[1:], tasks_fn=toy_tasks)
