"""
Chat with a trained model in the terminal.

    python -m scripts.chat_cli                 # interactive, sft checkpoint
    python -m scripts.chat_cli -i mid -p "Why is the sky blue?"   # answer once and exit

Commands: 'quit' or 'exit' to leave, 'clear' to start a new conversation. Only the text meant
for people is printed; a calculator call is shown as "[calculator: 2+3] = 5".
"""

import argparse
import sys
from contextlib import nullcontext

MAX_REPLY_TOKENS = 256


def assistant_turn(engine, tokenizer, conversation, temperature, top_k, write, max_tokens=MAX_REPLY_TOKENS):
    """Generate one reply to `conversation` (token ids ending in <|assistant_start|>), print its
    visible text as it streams, and return the reply's ids ending in <|assistant_end|>."""
    from nanochat.engine import ReplyDecoder
    assistant_end = tokenizer.encode_special("<|assistant_end|>")
    decoder = ReplyDecoder(tokenizer)
    reply = []
    for column, _ in engine.generate(conversation, num_samples=1, max_tokens=max_tokens,
                                     temperature=temperature, top_k=top_k):
        reply.append(column[0])
        write(decoder.add(column[0]))
        if decoder.stop:
            break
    write(decoder.flush())
    if reply and reply[-1] == tokenizer.get_bos_token_id():
        reply.pop()  # a stray BOS ends the reply but does not belong in the conversation
    if not reply or reply[-1] != assistant_end:
        reply.append(assistant_end)  # hit the length limit: close the turn ourselves
    return reply


def chat(engine, tokenizer, prompt="", temperature=0.6, top_k=50, read=input, write=None, autocast_ctx=None):
    """The conversation loop. `read(prompt_text)` returns the user's line; EOF or Ctrl-C ends it."""
    if write is None:
        write = lambda text: (sys.stdout.write(text), sys.stdout.flush())
    special = tokenizer.encode_special
    bos = tokenizer.get_bos_token_id()
    conversation = [bos]

    def respond(user_input):
        conversation.extend([special("<|user_start|>"), *tokenizer.encode(user_input), special("<|user_end|>"),
                             special("<|assistant_start|>")])
        write("\nAssistant: ")
        with autocast_ctx or nullcontext():
            conversation.extend(assistant_turn(engine, tokenizer, conversation, temperature, top_k, write))
        write("\n")
        return conversation

    if prompt:
        return respond(prompt)
    write("\nNanoChat interactive mode\n" + "-" * 50 + "\nType 'quit' or 'exit' to end, "
          "'clear' to start a new conversation\n" + "-" * 50 + "\n")
    while True:
        try:
            user_input = read("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\nGoodbye!\n")
            return conversation
        if user_input.lower() in ("quit", "exit"):
            write("Goodbye!\n")
            return conversation
        if user_input.lower() == "clear":
            del conversation[1:]  # back to [BOS]
            write("Conversation cleared.\n")
        elif user_input:
            respond(user_input)


def main(argv=None):
    from nanochat.checkpoint_manager import load_model
    from nanochat.common import autocast_context, autodetect_device_type, compute_init
    from nanochat.engine import Engine
    parser = argparse.ArgumentParser(description="Chat with the model")
    parser.add_argument("-i", "--source", type=str, default="sft", help="checkpoint stage: base|mid|sft|rl")
    parser.add_argument("-g", "--model-tag", type=str, default=None, help="model tag to load")
    parser.add_argument("-s", "--step", type=int, default=None, help="checkpoint step to load")
    parser.add_argument("-p", "--prompt", type=str, default="", help="answer this prompt once and exit")
    parser.add_argument("-t", "--temperature", type=float, default=0.6, help="sampling temperature")
    parser.add_argument("-k", "--top-k", type=int, default=50, help="top-k sampling (0 = off)")
    parser.add_argument("--device-type", default="", choices=["", "cuda", "cpu", "mps"], help="empty = autodetect")
    parser.add_argument("-d", "--dtype", type=str, default="bfloat16", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    device_type = args.device_type or autodetect_device_type()
    _, _, _, _, device = compute_init(device_type)
    try:  # FileNotFoundError says where it looked and which stage produces the checkpoint
        model, tokenizer, _ = load_model(args.source, device, "eval", args.model_tag, args.step)
    except (FileNotFoundError, ValueError) as e:
        print(f"chat_cli: {e}", file=sys.stderr)
        sys.exit(1)
    top_k = args.top_k if args.top_k > 0 else None
    chat(Engine(model, tokenizer), tokenizer, prompt=args.prompt, temperature=args.temperature, top_k=top_k,
         autocast_ctx=autocast_context(device_type, args.dtype))


if __name__ == "__main__":
    main()
