"""
Synthetic spelling tasks built from an English word list:
- SpellingBee: "how many <letter> are in <word>?", answered by spelling the word out, counting,
  and double-checking with the Python tool; scored on the final '#### <count>'.
- SimpleSpelling: "Spell the word: <word>" -> "<word>:w,o,r,d" (teaches the word/letters mapping).
"""

import random

from nanochat.common import data_pack_path, download_file_with_lock
from tasks.common import Task
from tasks.gsm8k import FinalAnswerScoring, extract_answer  # noqa: F401  (extract_answer re-exported)

LETTERS = "abcdefghijklmnopqrstuvwxyz"
WORD_LIST_URL = "https://raw.githubusercontent.com/dwyl/english-words/refs/heads/master/words_alpha.txt"

USER_MSG_TEMPLATES = [
    "How many {letter} are in the word {word}",
    "How many {letter} are in {word}",
    "How many times does the letter {letter} appear in {word}",
    "How many times does {letter} appear in the word {word}",
    "Count the number of {letter} in {word}",
    "Count how many {letter} are in the word {word}",
    "How many {letter}s are there in {word}",
    "How many {letter}s does {word} have",
    "How many letter {letter} does the word {word} contain",
    "In the word {word}, how many {letter} are there",
    "What is the count of {letter} in {word}",
    "Tell me how many {letter} there are in {word}",
    "How often does {letter} occur in {word}",
    "Number of {letter} in {word}",
    "Can you count the {letter} in {word}",
    "Please count the letter {letter} in the word {word}",
    "How many occurrences of {letter} are in {word}",
    "Find the number of times {letter} shows up in {word}",
    "If you spell {word}, how many {letter} do you write",
    "Does {word} contain the letter {letter}, and how many times",
    "I need the number of {letter} characters in {word}",
    "Quick question: how many {letter} in {word}",
    "What's the number of {letter} in the word {word}",
    "Spell out {word} and count the {letter}",
    "How many {letter} can you find in {word}",
    "Give me the count of the letter {letter} in {word}",
    "Letter {letter}: how many in {word}",
    "Check how many times {letter} appears in {word}",
    "Count every {letter} in the word {word}",
    "How many copies of the letter {letter} are in {word}",
    "Within {word}, how many {letter} appear",
    "What number of {letter} does {word} contain",
    # Spanish
    "¿Cuántas {letter} hay en la palabra {word}",
    "¿Cuántas veces aparece la letra {letter} en {word}",
    "Cuenta las {letter} en {word}",
    # French
    "Combien de {letter} y a-t-il dans le mot {word}",
    "Combien de fois la lettre {letter} apparaît-elle dans {word}",
    # German
    "Wie viele {letter} sind im Wort {word}",
    "Wie oft kommt der Buchstabe {letter} in {word} vor",
    # Chinese
    "单词{word}中有几个{letter}",
    "{word}这个词里有多少个字母{letter}",
    # Korean
    "{word}에 {letter}가 몇 개 있나요",
    "단어 {word}에서 {letter}는 몇 번 나오나요",
    # Japanese
    "{word}という単語に{letter}はいくつありますか",
    "{word}の中に{letter}は何個ありますか",
    # Italian / Portuguese
    "Quante {letter} ci sono nella parola {word}",
    "Quantas letras {letter} existem na palavra {word}",
]

_WORDS = None


def load_words():
    """The word list (one lower-case word per line), fetched once into the base dir."""
    global _WORDS
    if _WORDS is None:
        path = download_file_with_lock(
            WORD_LIST_URL, "words_alpha.txt", local_copy=data_pack_path("words_alpha.txt"),
            offline_hint="Download words_alpha.txt from dwyl/english-words into the nanochat base dir, "
                         "or set NANOCHAT_DATA_PACK to a data pack that has words_alpha.txt.")
        with open(path, encoding="utf-8") as f:
            _WORDS = [line.strip() for line in f if line.strip()]
    return _WORDS


def spelled_answer(word, letter):
    """The assistant's reply as conversation parts: spell, count by hand, verify with Python."""
    count = word.count(letter)
    lines = [f"We are asked to find the number '{letter}' in the word '{word}'. Let me try a manual approach first.",
             "", "First spell the word out:", f"{word}:{','.join(word)}", "",
             f"Then count the occurrences of '{letter}':"]
    for i, char in enumerate(word, start=1):
        hit = f" hit! count={word[:i].count(letter)}" if char == letter else ""
        lines.append(f"{i}:{char}{hit}")
    lines += ["", f"This gives us {count}."]
    return [
        {"type": "text", "text": "\n".join(lines)},
        {"type": "text", "text": "\n\nLet me double check this using Python:\n\n"},
        {"type": "python", "text": f"'{word}'.count('{letter}')"},
        {"type": "python_output", "text": str(count)},
        {"type": "text", "text": f"\n\nPython gives us {count}.\n\nMy final answer is:\n\n#### {count}"},
    ]


class _SpellingTask(Task):
    """`size` synthetic examples drawn from the word list, each from its own seeded generator."""

    eval_type = "generative"

    def __init__(self, size=1000, split="train", **kwargs):
        super().__init__(**kwargs)
        assert split in ("train", "test"), f"{type(self).__name__} split must be train|test, got {split!r}"
        self.size, self.split = size, split
        self.words = load_words()

    def num_examples(self):
        return self.size

    def _rng(self, index):
        # train and test draw from disjoint seeds
        return random.Random(index if self.split == "train" else -(index + 1))


class SpellingBee(FinalAnswerScoring, _SpellingTask):

    def get_example(self, index):
        rng = self._rng(index)
        word = rng.choice(self.words)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(LETTERS)
        template = rng.choice(USER_MSG_TEMPLATES)
        if rng.random() < 0.3:
            template = template.lower()
        letter_quote = rng.choice(["", "'", '"'])
        word_quote = rng.choice(["", "'", '"'])
        user_msg = template.format(letter=f"{letter_quote}{letter}{letter_quote}",
                                   word=f"{word_quote}{word}{word_quote}")
        if rng.random() < 0.5:
            user_msg += "?"
        messages = [{"role": "user", "content": user_msg},
                    {"role": "assistant", "content": spelled_answer(word, letter)}]
        return {"messages": messages}


class SimpleSpelling(_SpellingTask):

    def __init__(self, size=1000, split="train", **kwargs):
        super().__init__(size, split, **kwargs)
        self.words = list(self.words)
        random.Random(42).shuffle(self.words)

    def get_example(self, index):
        word = self._rng(index).choice(self.words)
        return {"messages": [{"role": "user", "content": f"Spell the word: {word}"},
                             {"role": "assistant", "content": f"{word}:{','.join(word)}"}]}


if __name__ == "__main__":
    task = SpellingBee()
    for i in range(10):
        conversation = task[i]
        print(conversation["messages"][0]["content"])
        wrap = {"text": "{}", "python": "<<{}=", "python_output": "{}>>"}
        print("".join(wrap[part["type"]].format(part["text"]) for part in conversation["messages"][1]["content"]))
        print("-" * 80)
