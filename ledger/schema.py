"""JSON Schema of the trace-event contract, generated from the pydantic models.

``docs/trace-event.schema.json`` is this output (``python -m ledger.schema >
docs/trace-event.schema.json``); a test fails when the two drift apart. The
envelope's schema is combined with one ``if event == X then payload: <model>``
rule per event type, plus the ``CALLBACK_*`` pattern for unnamed callbacks.
"""

from __future__ import annotations

import json
from typing import Any

from ledger.events import EventEnvelope
from ledger.payloads import PAYLOAD_MODELS, FreePayload

SCHEMA_ID = "https://agentledger.dev/schemas/trace-event.v1.json"


def trace_event_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one wire event."""
    schema = EventEnvelope.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})
    rules: list[dict[str, Any]] = []
    for event, model in PAYLOAD_MODELS.items():
        payload = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(payload.pop("$defs", {}))
        name = f"{event}_payload"
        defs[name] = payload
        rules.append({"if": {"properties": {"event": {"const": event}}},
                      "then": {"properties": {"payload": {"$ref": f"#/$defs/{name}"}}}})
    defs["CALLBACK_other_payload"] = FreePayload.model_json_schema()
    schema["properties"]["event"] = {
        "title": "Event",
        "anyOf": [{"enum": sorted(PAYLOAD_MODELS)}, {"pattern": "^CALLBACK_[A-Z0-9_]+$"}],
    }
    rules.append({"if": {"properties": {"event": {"const": "CALLBACK_MEMORY_WRITE"}}},
                  "then": {"required": ["write_scope"]}})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            **schema, "allOf": rules, "$defs": defs}


if __name__ == "__main__":
    print(json.dumps(trace_event_schema(), indent=2, sort_keys=True))
