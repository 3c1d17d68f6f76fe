import json
import logging

from timesheets.logs import JsonFormatter, logging_config


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "timesheets.auth", logging.INFO, __file__, 1, "token %s", ("x",), None
    )
    record.__dict__.update(extra)
    return record


def test_json_formatter_writes_one_object_with_extra_fields():
    line = JsonFormatter().format(_record(reason="expired", by_seconds=12, color_message="\x1b"))

    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "token x"
    assert entry["level"] == "info" and entry["logger"] == "timesheets.auth"
    assert entry["reason"] == "expired" and entry["by_seconds"] == 12
    assert "color_message" not in entry and "args" not in entry
    assert entry["time"].endswith("Z")


def test_logging_config_routes_service_and_uvicorn_to_the_chosen_format():
    config = logging_config("json")

    assert config["formatters"]["main"] == {"()": JsonFormatter}
    assert set(config["loggers"]) >= {"timesheets", "uvicorn"}
    assert "format" in logging_config("text")["formatters"]["main"]
