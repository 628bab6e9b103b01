"""Reads the EduPulse event stream from NATS JetStream, as a team that does not use Rust would.

It uses only the published contracts: the JSON Schemas committed under schemas/, the CloudEvents
attributes in the ce-* headers, and the subject layout <prefix>.<EventType>.<stream id>. For each
message it

- validates the body (the envelope) against schemas/envelope.json and against the schema named
  by its ce-dataschema header (the schema's $id), formats included;
- checks the CloudEvents attributes against the body: ce-specversion 1.0, ce-id = id,
  ce-type = edupulse.<type>.v<version>, ce-subject = the stream id (aggregate_id, or id for a
  standalone event), ce-time = occurred_at, a ce-source;
- checks per-stream order: ce-streamversion is the previous version of the same stream plus one.

It reads every message stored when it starts, with an ordered consumer (nothing to acknowledge,
nothing left on the server), and prints its counts as one JSON object on stdout. The exit status
is 0 when every message passed, 1 otherwise.

    python consume.py --server nats://127.0.0.1:4222 --stream EDUPULSE_EVENTS \\
        --subject-prefix edupulse --schemas ../../schemas
"""

import argparse
import asyncio
import json
import pathlib
import sys
from collections import Counter

import jsonschema
import nats
from referencing import Registry, Resource

MAX_ERRORS = 20


def load_schemas(folder):
    """Every committed schema, by its $id: the ce-dataschema header names one of them."""
    folder = pathlib.Path(folder)
    resources = {}
    for path in [folder / "envelope.json", *sorted((folder / "events").glob("*.json"))]:
        schema = json.loads(path.read_text(encoding="utf-8"))
        resources[schema["$id"]] = schema
    registry = Registry().with_resources(
        (uri, Resource.from_contents(schema)) for uri, schema in resources.items()
    )
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    validators = {
        uri: jsonschema.Draft202012Validator(schema, registry=registry, format_checker=checker)
        for uri, schema in resources.items()
    }
    envelope = next(v for uri, v in validators.items() if uri.endswith("/envelope.json"))
    return envelope, validators


class Report:
    def __init__(self):
        self.messages = 0
        self.valid = 0
        self.by_type = Counter()
        self.by_type_version = Counter()
        self.sources = Counter()
        self.last_version = {}
        self.out_of_order = 0
        self.duplicates = 0
        self.seen_ids = set()
        self.errors = []
        self.error_count = 0

    def error(self, sequence, text):
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"message {sequence}: {text}")

    def as_json(self):
        return {
            "messages": self.messages,
            "valid": self.valid,
            "invalid": self.messages - self.valid,
            "by_type": dict(sorted(self.by_type.items())),
            "by_type_version": dict(sorted(self.by_type_version.items())),
            "streams": len(self.last_version),
            "out_of_order": self.out_of_order,
            "duplicates": self.duplicates,
            "sources": dict(self.sources),
            "errors": self.errors,
            "error_count": self.error_count,
        }


def check(msg, envelope_validator, validators, report):
    """Checks one message; returns the list of what is wrong with it."""
    headers = msg.headers or {}
    problems = []
    try:
        body = json.loads(msg.data)
    except ValueError as e:
        return [f"the body is not JSON: {e}"]

    problems += [f"envelope schema: {e.message}" for e in envelope_validator.iter_errors(body)]
    dataschema = headers.get("ce-dataschema")
    validator = validators.get(dataschema)
    if validator is None:
        problems.append(f"ce-dataschema {dataschema!r} is not a committed schema")
    else:
        problems += [f"{dataschema}: {e.message}" for e in validator.iter_errors(body)]
    if problems:
        return problems

    event_type, version = body["event"]["type"], body["version"]
    stream = body["aggregate_id"] or body["id"]
    expected = {
        "ce-specversion": "1.0",
        "ce-id": body["id"],
        "ce-type": f"edupulse.{event_type}.v{version}",
        "ce-subject": stream,
        "ce-time": body["occurred_at"],
    }
    for name, value in expected.items():
        if headers.get(name) != value:
            problems.append(f"{name} is {headers.get(name)!r}, expected {value!r}")
    if not headers.get("ce-source"):
        problems.append("no ce-source")
    if problems:
        return problems

    report.by_type[event_type] += 1
    report.by_type_version[f"{event_type}.v{version}"] += 1
    report.sources[headers["ce-source"]] += 1
    if body["id"] in report.seen_ids:
        report.duplicates += 1
    report.seen_ids.add(body["id"])
    stream_version = int(headers.get("ce-streamversion", "0"))
    previous = report.last_version.get(stream, 0)
    if stream_version != previous + 1:
        report.out_of_order += 1
        problems.append(f"stream {stream}: version {stream_version} after {previous}")
    report.last_version[stream] = max(previous, stream_version)
    return problems


async def consume(args):
    envelope_validator, validators = load_schemas(args.schemas)
    report = Report()
    nc = await nats.connect(servers=[args.server], connect_timeout=10)
    try:
        js = nc.jetstream()
        last = (await js.stream_info(args.stream)).state.last_seq
        if last:
            sub = await js.subscribe(
                f"{args.subject_prefix}.*.*", stream=args.stream, ordered_consumer=True
            )
            sequence = 0
            while sequence < last:
                msg = await sub.next_msg(timeout=args.timeout)
                sequence = msg.metadata.sequence.stream
                report.messages += 1
                problems = check(msg, envelope_validator, validators, report)
                if problems:
                    report.error(sequence, "; ".join(problems))
                else:
                    report.valid += 1
            await sub.unsubscribe()
    finally:
        await nc.close()
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="EDUPULSE_EVENTS")
    parser.add_argument("--subject-prefix", default="edupulse")
    parser.add_argument(
        "--schemas",
        default=str(pathlib.Path(__file__).resolve().parents[2] / "schemas"),
        help="the committed schemas folder",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the next message"
    )
    report = asyncio.run(consume(parser.parse_args()))
    print(json.dumps(report.as_json(), sort_keys=True))
    sys.exit(0 if report.error_count == 0 and report.messages == report.valid else 1)


if __name__ == "__main__":
    main()
