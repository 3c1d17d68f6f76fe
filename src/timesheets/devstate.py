"""Where `timesheets dev` keeps its signing key and tells `timesheets token` what to mint for."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_DIR = Path(".timesheets-dev")
DEV_AUDIENCE = "https://api.exampleco.com/timesheets"


@dataclass(frozen=True)
class DevState:
    issuer: str
    audience: str
    key_file: str

    @classmethod
    def for_port(cls, port: int, state_dir: Path = STATE_DIR) -> "DevState":
        return cls(
            issuer=f"http://127.0.0.1:{port}/dev/",
            audience=DEV_AUDIENCE,
            key_file=str((state_dir / "signing-key.pem").resolve()),
        )

    @property
    def jwks_uri(self) -> str:
        return self.issuer + ".well-known/jwks.json"

    def save(self, state_dir: Path = STATE_DIR) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "issuer.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path = STATE_DIR, default_port: int = 8080) -> "DevState":
        path = state_dir / "issuer.json"
        if path.exists():
            return cls(**json.loads(path.read_text()))
        return cls.for_port(default_port, state_dir)
