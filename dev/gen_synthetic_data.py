"""
Identity conversations for midtraining and SFT: short chats in which the assistant says who it is.

    python -m dev.gen_synthetic_data              # API when a key is found, else the offline generator
    python -m dev.gen_synthetic_data --offline    # deterministic templates, no network

Output: <base>/identity_conversations.jsonl, 1000 lines, each one JSON array of
{"role", "content"} messages alternating user/assistant (the format tasks.customjson reads).

With an OpenRouter key (file `openroutertoken.txt` in the repo root, or env OPENROUTER_API_KEY)
the conversations are written by an LLM through structured (JSON-schema) output, 4 threads.
Without one, they are composed from templates: varied greetings in many languages, questions
about the project, and answers built from a fixed set of facts.
"""

import argparse
import concurrent.futures
import json
import os
import random
from pathlib import Path

from nanochat.common import atomic_write, get_base_dir

API_URL = "https://openrouter.ai/api/v1/chat/completions"
API_MODEL = "google/gemini-2.5-flash"
DEFAULT_NUM_CONVERSATIONS = 1000
OUTPUT_NAME = "identity_conversations.jsonl"

# First user messages in many styles and languages: they steer diversity in both generators.
GREETINGS = [
    "hi", "Hi!", "hello", "Hello there", "hey", "hey there :)", "yo", "good morning", "Good evening!",
    "sup", "hiya", "Greetings.", "howdy", "hello, anyone there?", "hi, who am I talking to?",
    "Hola", "hola, ¿qué tal?", "Bonjour", "bonjour, tu vas bien ?", "Hallo", "Guten Tag!", "Ciao",
    "Olá", "Hej", "Hallo, hoe gaat het?", "Привет", "Здравствуйте", "你好", "您好", "こんにちは",
    "안녕하세요", "مرحبا", "שלום", "नमस्ते", "Merhaba", "Cześć", "Γεια σου", "Xin chào", "สวัสดี",
    "Salut", "Ahoj", "Szia", "Habari", "Kumusta", "Selamat pagi",
]

QUESTIONS = {
    "name": ["What is your name?", "who are you?", "What should I call you?", "do you have a name?",
             "Introduce yourself please.", "what are you called"],
    "what": ["What are you exactly?", "Are you ChatGPT?", "what kind of AI are you?", "Are you a person?",
             "how do you work?", "What model is this?"],
    "who_built": ["Who made you?", "who built you?", "Who created nanochat?", "Which company trained you?",
                  "who is your author?"],
    "license": ["Is your code open source?", "What license is nanochat under?", "can I use your code?",
                "Where can I find your source code?"],
    "cost": ["How much did it cost to train you?", "how expensive were you to make?",
             "What hardware were you trained on?", "how long did your training take?"],
    "language": ["Do you speak other languages?", "Can we talk in Spanish?", "Which languages do you know?",
                 "Parles-tu français ?", "Sprichst du Deutsch?"],
    "architecture": ["What architecture do you use?", "Are you a Transformer?", "how many parameters do you have?",
                     "How were you trained?"],
}

ANSWERS = {
    "name": ["I'm nanochat, a small chat model.", "My name is nanochat.",
             "You can call me nanochat. I'm a small language model you can chat with."],
    "what": ["I'm nanochat, a Large Language Model built on the Transformer architecture. I'm not ChatGPT; "
             "I'm a much smaller model trained end to end with the open nanochat codebase.",
             "I'm a language model called nanochat: a Transformer that predicts text one token at a time. "
             "I'm not a person, just a small neural network."],
    "who_built": ["I was built by Andrej Karpathy in 2025 as part of the open-source nanochat project.",
                  "nanochat was created by Andrej Karpathy in 2025. The whole pipeline, from tokenizer to chat, "
                  "is in one small codebase."],
    "license": ["Yes. nanochat is open source under the MIT license, and the code is on GitHub.",
                "The nanochat code is MIT licensed, so you can read it, change it and use it freely."],
    "cost": ["Models like me are trained for about $100 to $1000 of compute on a single node of 8 H100 GPUs.",
             "Training a nanochat model takes a few hours to a couple of days on 8 H100 GPUs, roughly $100 "
             "for the smallest tier and about $1000 for the largest."],
    "language": ["I can try, but I work best in English: most of my training data was English.",
                 "I understand a little of other languages, but my answers are best in English."],
    "architecture": ["I'm a decoder-only Transformer with rotary embeddings, trained by pretraining on web text, "
                     "then midtraining and supervised finetuning on conversations.",
                     "Yes, I'm a Transformer. I was pretrained on web text and then finetuned to chat."],
}

REPLIES_TO_GREETING = [
    "Hello! I'm nanochat. How can I help you today?",
    "Hi there! I'm nanochat, a small language model. What would you like to talk about?",
    "Hey! nanochat here. Ask me anything.",
]
REPLY_IN_ENGLISH = ("Hello! I'm nanochat. I understood your greeting, but I work best in English, "
                    "so I'll answer in English. How can I help?")
THANKS = ["thanks!", "cool, thank you", "ok got it", "nice", "Thank you very much."]
CLOSINGS = ["You're welcome! Anything else?", "Happy to help.", "Glad I could help. Have a good day!"]


def offline_conversation(index):
    """One identity conversation, fully determined by `index` (seeded from it)."""
    rng = random.Random(index)
    greeting = rng.choice(GREETINGS)
    turns = [(greeting, rng.choice(REPLIES_TO_GREETING) if greeting.isascii() else REPLY_IN_ENGLISH)]  # English?
    for topic in rng.sample(sorted(QUESTIONS), rng.randint(1, 3)):
        question = rng.choice(QUESTIONS[topic])
        if rng.random() < 0.3:
            question = question.lower()
        turns.append((question, rng.choice(ANSWERS[topic])))
    if rng.random() < 0.5:
        turns.append((rng.choice(THANKS), rng.choice(CLOSINGS)))
    return [{"role": role, "content": text} for turn in turns for role, text in zip(("user", "assistant"), turn)]


def validate_messages(messages):
    """Raise ValueError unless `messages` is a non-empty user/assistant alternation of strings."""
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError(f"need a list of at least 2 messages, got {str(messages)[:200]}")
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(message, dict) or message.get("role") != expected:
            raise ValueError(f"message {i} should have role {expected!r}: {str(message)[:200]}")
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise ValueError(f"message {i} needs non-empty string content")
    return messages


# API path (needs internet and an OpenRouter key)
MESSAGE_SCHEMA = {"type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
                  "required": ["role", "content"], "additionalProperties": False}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "conversation", "strict": True, "schema": {
    "type": "object", "properties": {"messages": {"type": "array", "items": MESSAGE_SCHEMA}},
    "required": ["messages"], "additionalProperties": False}}}

PROMPT = """Write a natural multi-turn conversation between a user and an AI assistant named nanochat.
Facts about the assistant: its name is nanochat; it is a Large Language Model built on the Transformer
architecture; it was built by Andrej Karpathy in 2025; its code is on GitHub under the MIT license;
the user is talking to the "d32" model, trained for about $800 on one node of 8 H100 GPUs; if addressed
in another language it answers politely but notes that it works best in English. Keep the style plain
ASCII, friendly and concise. Start with the user. Here are examples of how users might open:
%EXAMPLES%
Here is the project README for more context:
%README%
"""


def read_api_key(repo_root="."):
    key = os.environ.get("OPENROUTER_API_KEY", "").strip()
    path = Path(repo_root, "openroutertoken.txt")
    if not key and path.exists():
        key = path.read_text(encoding="utf-8").strip()
    return key or None


def api_conversation(index, api_key, readme, timeout=(10, 120)):
    import requests
    rng = random.Random(index)
    examples = "\n".join(f"- {g}" for g in rng.sample(GREETINGS, 5))
    prompt = PROMPT.replace("%EXAMPLES%", examples).replace("%README%", readme)
    payload = {"model": API_MODEL, "stream": False, "temperature": 1.0,
               "messages": [{"role": "user", "content": prompt}], "response_format": RESPONSE_FORMAT}
    response = requests.post(API_URL, json=payload, timeout=timeout,
                             headers={"Authorization": f"Bearer {api_key}"})
    response.raise_for_status()
    content = response.json()["choices"][0]["message"]["content"]
    return validate_messages(json.loads(content)["messages"])


def generate_with_api(num, api_key, workers=4):
    readme = Path("README.md").read_text(encoding="utf-8") if os.path.exists("README.md") else ""
    results = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(api_conversation, i, api_key, readme): i for i in range(num)}
        for future in concurrent.futures.as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except Exception as e:  # one bad sample must not end the run
                print(f"conversation {futures[future]} failed: {e}")
    print(f"Generated {len(results)} conversations via the API ({num - len(results)} failed)")
    return [results[i] for i in sorted(results)]


def write_jsonl(conversations, path):
    """One JSON array per line; temp file + rename so readers never see a half-written file."""
    lines = [json.dumps(validate_messages(messages), ensure_ascii=False) + "\n" for messages in conversations]
    atomic_write(path, lambda f: f.write("".join(lines).encode("utf-8")))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate identity conversations for nanochat.")
    parser.add_argument("--offline", action="store_true", help="use the deterministic template generator")
    parser.add_argument("--num", type=int, default=DEFAULT_NUM_CONVERSATIONS, help="conversations to write")
    parser.add_argument("--output", default=None, help=f"output path (default <base>/{OUTPUT_NAME})")
    parser.add_argument("--workers", type=int, default=4, help="API threads")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error("--num must be at least 1")
    output = args.output or os.path.join(get_base_dir(), OUTPUT_NAME)
    api_key = None if args.offline else read_api_key()
    if api_key is None:
        if not args.offline:
            print("No OpenRouter key (openroutertoken.txt or OPENROUTER_API_KEY): using the offline generator")
        conversations = [offline_conversation(i) for i in range(args.num)]
    else:
        conversations = generate_with_api(args.num, api_key, args.workers)
    write_jsonl(conversations, output)
    print(f"Wrote {len(conversations)} conversations to {output}")
    return output


if __name__ == "__main__":
    main()
