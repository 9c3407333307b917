"""The command line: every command module is reachable, in the documented workflow order."""
import pkgutil

import pytest

from percepiano import cli, commands


def test_every_command_module_is_a_command():
    modules = {m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")}
    assert set(cli.COMMANDS) == modules
    assert len(cli.COMMANDS) == len(set(cli.COMMANDS))


def test_help_lists_the_commands_in_workflow_order(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    positions = [out.index(f"    {name.replace('_', '-')} ") if f"    {name.replace('_', '-')} " in out
                 else out.index(f"    {name.replace('_', '-')}\n") for name in cli.COMMANDS]
    assert positions == sorted(positions)


def test_no_command_is_an_error_with_the_usage(capsys):
    assert cli.main([]) == 2
    assert "usage: percepiano" in capsys.readouterr().err
