#!/usr/bin/env python3
"""Discovery and health endpoints through Switchyard with the official clients.

Checks what `tests/discovery.rs` checks on the wire, but with the real client libraries:
the OpenAI Python SDK (`client.models.list()`, `client.models.retrieve(id)`) and
`tritonclient.http` (`is_server_live()`, `is_server_ready()`, `get_server_metadata()`,
`is_model_ready()`, `get_model_metadata()`, `get_model_config()`), plus TF-Serving model
status and metadata with plain HTTP. Not run by `cargo test` (it needs Python packages):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install openai 'tritonclient[http]'
    /tmp/venv/bin/python examples/clients/discovery.py --gateway 127.0.0.1:8080 --model bert-base

`--tf-serving` says the policy has a `tf-serving` route matching `/v1/models/*`: then
`/v1/models/{id}` is TF-Serving's model status (proxied), not OpenAI's retrieve, and the
script checks the TF-Serving side instead. Exits non-zero on the first failed check.
"""

import argparse
import json
import sys
import urllib.request

import openai
import tritonclient.http as triton


def check(what, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + str(detail) if detail else ''}")
    if not ok:
        sys.exit(1)


def openai_side(gateway, model, tf_serving):
    client = openai.OpenAI(base_url=f"http://{gateway}/v1", api_key="unused-or-your-key")
    ids = [m.id for m in client.models.list()]
    check("openai models.list()", model in ids and ids == sorted(ids), ids)
    if tf_serving:
        return
    m = client.models.retrieve(model)
    check("openai models.retrieve(id)", m.id == model and m.owned_by == "switchyard", m)
    try:
        client.models.retrieve("no-such-model-anywhere")
        # A pool serving `*` makes every id retrievable: that is not a failure.
        print("note policy has a `*` pool reachable by this tier: every id is retrievable")
    except openai.NotFoundError as e:
        check("openai retrieve(unknown) -> NotFoundError", e.code == "model_not_found", e)


def triton_side(gateway, model):
    client = triton.InferenceServerClient(url=gateway)
    check("tritonclient is_server_live()", client.is_server_live())
    check("tritonclient is_server_ready()", client.is_server_ready())
    meta = client.get_server_metadata()
    check("tritonclient get_server_metadata()", meta.get("name") == "switchyard", meta)
    # Proxied to a pool serving the model: the answers are the model server's.
    check("tritonclient is_model_ready(m)", client.is_model_ready(model))
    meta = client.get_model_metadata(model)
    check("tritonclient get_model_metadata(m)", meta.get("name") == model, meta)
    config = client.get_model_config(model)
    check("tritonclient get_model_config(m)", isinstance(config, dict), config)


def tf_serving_side(gateway, model):
    for path in (f"/v1/models/{model}", f"/v1/models/{model}/metadata"):
        with urllib.request.urlopen(f"http://{gateway}{path}") as r:
            body = json.load(r)
            check(f"TF-Serving GET {path}", r.status == 200, body)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gateway", default="127.0.0.1:8080", help="host:port of the proxy listener")
    p.add_argument("--model", default="bert-base", help="a model the policy routes")
    p.add_argument("--tf-serving", action="store_true", help="/v1/models/* is a tf-serving route")
    a = p.parse_args()
    openai_side(a.gateway, a.model, a.tf_serving)
    triton_side(a.gateway, a.model)
    if a.tf_serving:
        tf_serving_side(a.gateway, a.model)


if __name__ == "__main__":
    main()
