import pathlib
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]

@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

@pytest.fixture(scope='session')
def root():
    return ROOT


def cli_here(capsys, *args):
    "The console script's `main` in this process (the same code path, without the start-up cost): (exit code, stderr)."
    from glscl.cli import main
    with pytest.raises(SystemExit) as e: main(list(args))
    return e.value.code, capsys.readouterr().err
