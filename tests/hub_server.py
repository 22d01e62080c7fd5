"""A stand-in for the Hugging Face Hub's file endpoint on 127.0.0.1, for the operator's
planner: ``GET /{org}/{name}/resolve/{revision}/config.json`` answers what
:attr:`HubStandIn.files` holds (SmolLM2's config by default), 404 for anything else.
It records every path asked, and can be made slow (``delay``) to play a Hub that does
not answer in time.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_CONFIG_PATH = f"/{SMOLLM2}/resolve/main/config.json"
# models/SmolLM2-135M-Instruct/config.json, the fields its config.json on the Hub has
# (copied: `make test-fast` runs the tests without the converted model).
SMOLLM2_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
}


class HubStandIn:
    """The Hub on 127.0.0.1 while entered (``with HubStandIn() as hub: hub.url``)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.files: dict[str, str] = {SMOLLM2_CONFIG_PATH: json.dumps(SMOLLM2_CONFIG)}
        self.asked: list[str] = []
        self.delay = delay
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in.asked.append(self.path)
                time.sleep(stand_in.delay)
                body = stand_in.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write((body or '{"error": "Entry not found"}').encode())

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
