"""``run_cli``: the one command line every app shares, built on ``LightningCLI``.

``python -m apps.<domain>.train`` without a subcommand fits and then tests the fitted
model, in one run directory: with no arguments on the app's default config, with options
(``--config apps/<domain>/configs/tiny.yaml --trainer.default_root_dir D``) on the default
config with those layered over it. With a subcommand it is a plain LightningCLI: subcommands
``fit``/``validate``/``test``/``predict``, ``--config`` files layered over the app's
default config, dotted overrides (``--model.adapter.init_args.r 4``, ``--trainer.max_epochs
3``) and ``--help`` (``--model.adapter.help LoraConfig`` lists one adapter's options). The
help of the model's adapter option lists every adapter method with its options; where the
config picks the module class (``subclass_mode``) so does ``--model`` in ``fit --help``, and
``fit --model.help <Class>`` shows that class's adapter option with the list
(:class:`FineTuneParser`).

An app's module passes the ``FineTuneModule`` arguments through (``def __init__(self,
own_args..., **kwargs)`` and ``super().__init__(model=net, **kwargs)``); jsonargparse follows
the ``**kwargs`` into the base class, so every base option is on the command line and in
``--help``. Options model and data share are linked (``run_cli(..., links={"data.image_size":
"model.image_size"})``, :mod:`core.training.links`): the user sets the source only. A link
whose target the module takes through ``**kwargs`` jsonargparse cannot follow is an error
naming the link and the class, not a link dropped silently.

Each run writes one directory, ``<trainer.default_root_dir>/version_<n>`` (the default root
is ``runs/<app>``), every file atomically (``core.training.run_files``, ``core.atomic``)::

    config.yaml          the full resolved config (LightningCLI)
    hparams.yaml         the model's hyperparameters
    metrics.csv          every logged value over time (CSVLogger)
    checkpoints/         last.ckpt and best.ckpt (lowest val/loss)
    adapter/             adapter_config.json + adapter_model.safetensors (PEFT layout)
    metrics.json         final scalar metrics of fit / validate / test
    report.md, *.png     after test: the module's ``test_report()`` (core.training.report)
    manifest.jsonl       one line per file written by the callbacks above

Resume with ``fit --ckpt_path <run_dir>/checkpoints/last.ckpt``; the resumed run gets its own
new run directory.

Bad input stops the run with one line, ``error: <what is wrong and how to fix it>``, exit
code 2 and no run directory left behind; ``--debug`` or ``SPECIALIST_FINETUNERS_DEBUG=1``
adds the traceback (``core.training.errors``). ``--ckpt_path`` is checked first: a readable
checkpoint of this app whose hyperparameters agree with the ``model`` options given
(``core.training.ckpt_checks``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from core.adapters import ADAPTER_REGISTRY

from .callbacks import AdapterExport, MetricsJson, PredictionsWriter
from .checkpointing import LastStepCheckpoint, checkpoint_plugins
from .ckpt_checks import (
    ModuleClassStamp,
    check_module_class,
    check_no_conflicts,
    explicit_model_options,
    is_local_path,
    read_checkpoint,
    saved_module_class,
)
from .config_checks import check_optimizer, check_yaml_syntax, yaml_files_in
from .errors import (
    DEBUG_ENV,
    DEBUG_FLAG,
    ShortErrorParser,
    UsageError,
    debug_from_env,
    is_user_error,
    one_line,
    pop_debug_flag,
    top_package,
    usage_errors_exit,
)
from .links import (
    check_links,
    check_links_reach,
    check_targets_not_given,
    given_keys,
    jsonargparse_options,
    link_error,
    lookup_plain,
    parser_key,
    plain_key,
)
from .report import ReportWriter
from .resume import ResumeRngState
from .run_dirs import RunDirGuard
from .run_files import AtomicCSVLogger, AtomicSaveConfigCallback

SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: The recipe of an app that makes a one-step fit + test run in seconds, offline.
TINY_CONFIG = "tiny.yaml"

#: Defaults of the ``checkpoint`` argument group (a LastStepCheckpoint every run has).
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "checkpoint.monitor": "val/loss",
    "checkpoint.mode": "min",
    "checkpoint.save_last": True,
    "checkpoint.save_top_k": 1,
    "checkpoint.filename": "best",
}


def adapter_methods_help() -> str:
    """One line per registered adapter method with its options and defaults."""
    lines = []
    for method, cls in sorted(ADAPTER_REGISTRY.items()):
        fields = ", ".join(
            f"{f.name}={_default_repr(f)}" for f in dataclasses.fields(cls) if f.init
        )
        lines.append(f"{method}: {cls.__name__}({fields})")
    return "; ".join(lines)


def _default_repr(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "required"


#: The model's adapter option: where the module class is fixed, and in ``--model.help <Class>``.
ADAPTER_OPTIONS = ("model.adapter", "model.init_args.adapter")
#: How the adapter is picked and set, on the command line.
ADAPTER_USAGE = (
    "Pick one with --model.adapter <Name> and set options with --model.adapter.init_args.<option>."
)


def _methods_help() -> str:
    """:func:`adapter_methods_help` for an argparse help string (which ``%``-formats it)."""
    return adapter_methods_help().replace("%", "%%")


def adapter_option_help(help_text: str | None) -> str:
    """The help of the model's adapter option, with the methods and their options."""
    return (
        f"{help_text or 'Adapter to inject.'} {ADAPTER_USAGE} "
        f"Methods and options: {_methods_help()}."
    )


def module_choice_help(help_text: str | None) -> str:
    """The help of ``--model`` where the config picks the class: the adapter methods too."""
    return (
        f"{help_text or ''} A module class's adapter: --model.adapter <Name>, its options: "
        "--model.adapter.init_args.<option> (--model.help <Class> lists all options of a "
        f"class). Adapter methods and options: {_methods_help()}."
    ).strip()


class FineTuneParser(ShortErrorParser):
    """The parser of the command line: one-line errors, and the adapter methods in the help.

    Wherever its help shows the model's adapter option, that option's help lists every
    registered adapter method with its options (:func:`adapter_methods_help`): in ``fit
    --help`` where the module class is fixed, and in ``fit --model.help <Class>`` where the
    config picks it (jsonargparse builds that help with a new parser of this class).
    """

    def format_help(self, *args: Any, **kwargs: Any) -> str:
        """The help text, with the adapter methods added to the model's adapter option."""
        for action in self._actions:
            if action.dest in ADAPTER_OPTIONS and ADAPTER_USAGE not in (action.help or ""):
                action.help = adapter_option_help(action.help)
        return super().format_help(*args, **kwargs)


class FineTuneCLI(LightningCLI):
    """LightningCLI with the core's run directory: CSV logs, checkpoints, adapter, metrics.

    Adds a configurable ``checkpoint`` group (a ``ModelCheckpoint``: ``--checkpoint.monitor``
    etc.), always adds :class:`AdapterExport`, :class:`MetricsJson`,
    :class:`PredictionsWriter` and :class:`ReportWriter`, and logs with an
    :class:`AtomicCSVLogger` rooted at ``trainer.default_root_dir`` unless ``trainer.logger``
    names another logger.
    """

    def __init__(
        self,
        *args: Any,
        app_name: str = "app",
        default_config: str | Path | None = None,
        debug: bool = False,
        links: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Parse, check, instantiate and run like LightningCLI, with the checks of bad input.

        Args:
            app_name: Names the default run root ``runs/<app_name>`` and messages.
            default_config: The app's config, given as the first ``--config``: its values are
                the app's defaults, not options the user chose (see ``_parse_ckpt_path``).
            debug: Parse errors print the full usage (as jsonargparse does) instead of one line.
            links: ``{source: target}`` options made equal at parse time (``run_cli``).

        Bad input (:func:`core.training.errors.is_user_error`) that stops the run after the
        trainer was made removes the run directory it created if that holds nothing of use.
        """
        self.app_name = app_name
        self.default_config = default_config
        self.debug = debug
        self.links = dict(links or {})
        cli_args = sys.argv[1:] if kwargs.get("args") is None else kwargs["args"]
        self._cli_args = [str(a) for a in cli_args] if isinstance(cli_args, list | tuple) else []
        self._run_dir_guard: RunDirGuard | None = None
        kwargs.setdefault("parser_class", FineTuneParser)
        try:
            super().__init__(*args, **kwargs)
        except Exception as exc:
            if self._run_dir_guard is not None and is_user_error(exc, self.own_packages()):
                logger = getattr(getattr(self, "trainer", None), "logger", None)
                self._run_dir_guard.clean(getattr(logger, "log_dir", None))
            raise

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the ``checkpoint`` group and the links; list the adapter methods in the help.

        Where the module class is fixed, jsonargparse refuses a link whose target is not an
        option of the class; the error names the link (and, where the class takes the option
        through ``**kwargs`` jsonargparse cannot follow, the ``__init__`` to change). Where
        the config picks the class, ``--model``'s help lists the adapter methods (the adapter
        option itself is in ``--model.help <Class>``, see :class:`FineTuneParser`).
        """
        parser.add_lightning_class_args(LastStepCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        for source, target in self.links.items():
            try:
                parser.link_arguments(
                    parser_key(source, self.subclass_mode_model),
                    parser_key(target, self.subclass_mode_model),
                    apply_on="parse",
                )
            except ValueError as err:
                raise link_error(source, target, self._model_class, err) from err
        if self.subclass_mode_model and self._takes_adapter():
            for action in parser._actions:
                if action.dest == "model" and "--model" in action.option_strings:
                    action.help = module_choice_help(action.help)

    def _takes_adapter(self) -> bool:
        """Whether the module class (the base, where the config picks one) has ``adapter``."""
        return "adapter" in jsonargparse_options(self._model_class)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse like LightningCLI, then check that every model link reached the class.

        Where the config picks the class, jsonargparse skips a link whose target the class
        lacks without a word; :func:`~core.training.links.check_links_reach` makes that an
        error where the class does take the option, through ``**kwargs`` jsonargparse could
        not follow.
        """
        super().parse_arguments(parser, args)
        if self.subclass_mode_model and self.links:
            subcommand = self.config.get("subcommand")
            config = self.config[subcommand] if subcommand else self.config
            check_links_reach(self.links, config.get("model"))

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if "logger" not in kwargs and trainer_cfg.get("logger") in (None, True):
            root = trainer_cfg.get("default_root_dir") or f"runs/{self.app_name}"
            kwargs["logger"] = AtomicCSVLogger(save_dir=root, name="")
        # Checkpoints are written atomically next to their destination, and hold the RNG
        # states a resumed fit needs to continue exactly (core.training.checkpointing, .resume).
        kwargs.setdefault(
            "plugins", checkpoint_plugins(trainer_cfg.get("plugins"), trainer_cfg.get("strategy"))
        )
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        kwargs.setdefault("callbacks", [*callbacks, ResumeRngState()])
        return super().instantiate_trainer(**kwargs)

    # ------------------------------------------------------------- checks of bad input
    def own_packages(self) -> set[str]:
        """Top-level packages whose ``ValueError``s report bad input (see ``errors``)."""
        classes = (self._model_class, self._datamodule_class, FineTuneCLI)
        return {top_package(c) for c in classes if c is not None}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """The (sub)command parser; one-line parse errors unless ``debug``."""
        parser = super().init_parser(**kwargs)
        parser.full_errors = self.debug
        return parser

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before loading its hyperparameters over the config.

        Replaces LightningCLI's method (same merge, one load of the file): the file must be
        a readable checkpoint of this app, and no ``model`` option the user gave may differ
        from the checkpoint's value, which the merge would silently put in its place.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not is_local_path(str(ckpt_path)):
            return
        ckpt = read_checkpoint(ckpt_path)
        app_package = None
        if self.subclass_mode_model and self._datamodule_class is not None:
            app_package = self._datamodule_class.__module__.rpartition(".")[0] or None
        check_module_class(ckpt, ckpt_path, self._model_class, self.app_name, app_package)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        class_path = hparams.pop("_class_path", None)
        saved = dict(hparams)
        if self.subclass_mode_model:  # the config picks the class: the checkpoint's, as checked
            class_path = class_path or saved_module_class(ckpt)
            class_path = class_path or self.config[subcommand].get("model.class_path")
            hparams = {"class_path": class_path, "dict_kwargs": hparams}
        # Where the class is fixed, a checkpoint saved where the config picked it (checked to be
        # this class or a subclass) holds this class's options as they are.
        given = copy.deepcopy(self.config[subcommand])
        exit_on_error, self.parser.exit_on_error = self.parser.exit_on_error, False
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except ArgumentError as err:
            raise UsageError(
                f"--ckpt_path {ckpt_path}: its hyperparameters do not fit "
                f"{self._model_class.__name__} ({_short(str(err))}); it was probably written "
                f"by another app: give a checkpoint of this app, e.g. "
                f"runs/{self.app_name}/version_<n>/checkpoints/last.ckpt."
            ) from err
        finally:
            self.parser.exit_on_error = exit_on_error
        options = explicit_model_options(self._cli_args, self.default_config)
        check_no_conflicts(given, self.config[subcommand], options, ckpt_path, subcommand)
        self._align_links_with_checkpoint(saved, subcommand, ckpt_path)

    def _align_links_with_checkpoint(
        self, hparams: dict[str, Any], subcommand: str, ckpt_path: str | Path
    ) -> None:
        """Give a linked model option the checkpoint's value, through its source.

        The merge above re-applies the links, so a linked model option takes the source's
        value (``data.image_size``), not the checkpoint's. Where they differ the source takes
        the checkpoint's value, as every other model option does; if the user gave the source
        that is a conflict, reported like one.
        """
        config = self.config[subcommand]
        given = {key: where for key, where in given_keys(self._cli_args)}
        for source, target in self.links.items():
            section, _, name = plain_key(target).partition(".")
            if section != "model" or name not in hparams:
                continue
            saved, current = hparams[name], lookup_plain(config, plain_key(source))
            if saved == current:
                continue
            if plain_key(source) in given:
                raise UsageError(
                    f"--ckpt_path {ckpt_path} was trained with {plain_key(target)}={saved!r}, "
                    f"which is linked to {plain_key(source)}; you gave {plain_key(source)}="
                    f"{current!r} {given[plain_key(source)]}: drop it to use the checkpoint's "
                    "value, or leave out --ckpt_path to start a fresh run with yours."
                )
            config[parser_key(source, self.subclass_mode_model)] = saved
            config[parser_key(target, self.subclass_mode_model)] = saved

    def after_instantiate_classes(self) -> None:
        """Check the optimizer's arguments and note the run root, before anything runs."""
        factory = getattr(self.model, "optimizer_factory", None)
        if callable(factory):
            key = "model.init_args.optimizer" if self.subclass_mode_model else "model.optimizer"
            cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
            optimizer = cfg.get(key)
            if isinstance(optimizer, Namespace) and optimizer.get("class_path"):
                init_args = optimizer.get("init_args")
                init_args = init_args.as_dict() if isinstance(init_args, Namespace) else {}
                check_optimizer(factory, key, optimizer.class_path, init_args)
        logger = self.trainer.logger
        root = getattr(logger, "root_dir", None) or self.trainer.default_root_dir
        self._run_dir_guard = RunDirGuard(root)


def _short(parse_error: str, limit: int = 300) -> str:
    """A jsonargparse error in one line, without the echo of the whole value it rejected."""
    text = one_line(parse_error).split(" Given value type:")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def app_name_of(module_cls: type) -> str:
    """``apps.medical_cxr.module.CxrModule`` -> ``medical_cxr`` (the package of the module)."""
    parts = module_cls.__module__.split(".")
    return parts[-2] if len(parts) >= 2 else module_cls.__name__.lower()


def subcommand_index(argv: Sequence[str]) -> int | None:
    """Position of the subcommand in ``argv`` (``None`` if there is none).

    A subcommand is a ``fit``/``validate``/``test``/``predict`` token that is not the value
    of the option before it (``--trainer.default_root_dir test`` names a folder).
    """
    for i, token in enumerate(argv):
        if token in SUBCOMMANDS:
            previous = argv[i - 1] if i else ""
            if not (previous.startswith("-") and "=" not in previous):
                return i
    return None


def with_default_config(argv: Sequence[str], default_config: str | Path) -> list[str]:
    """Insert ``--config <default_config>`` right after the subcommand.

    Later ``--config`` files and dotted options then override the app's defaults. (The
    config is passed as the first ``--config`` rather than through jsonargparse's
    ``default_config_files``, which in jsonargparse 4.53 drops the ``class_path`` of a
    callable such as ``model.optimizer`` when it has ``init_args``.)
    """
    argv = list(argv)
    i = subcommand_index(argv)
    if i is None:
        return argv
    return [*argv[: i + 1], "--config", str(default_config), *argv[i + 1 :]]


def fits_then_tests(argv: Sequence[str]) -> bool:
    """Whether ``argv`` means "fit, then test": no subcommand and no top-level ``--help``."""
    return subcommand_index(argv) is None and not any(t in ("-h", "--help") for t in argv)


def tiny_config(app_package: str) -> Path:
    """``<app package>/configs/tiny.yaml``: the app's recipe for a fit + test in seconds.

    Args:
        app_package: The app's package, e.g. ``"apps.vision"`` or ``"core.examples"``.

    Raises:
        FileNotFoundError: The package or its ``configs/tiny.yaml`` does not exist.
    """
    spec = importlib.util.find_spec(app_package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{app_package!r} is not an importable package.")
    path = Path(next(iter(spec.submodule_search_locations))) / "configs" / TINY_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is missing: every app has a configs/{TINY_CONFIG} that makes a "
            "one-step fit + test run in seconds, offline (see docs/new_domain_app.md)."
        )
    return path


def run_cli(
    module_cls: type[pl.LightningModule],
    datamodule_cls: type[pl.LightningDataModule],
    default_config: str | Path,
    args: Sequence[str] | None = None,
    app_name: str | None = None,
    subclass_mode: bool = False,
    exit_on_error: bool | None = None,
    links: Mapping[str, str] | None = None,
    run: bool = True,
) -> FineTuneCLI:
    """Run an app's command line; without a subcommand, fit then test.

    Bad input (a value the config or the model rejects, a YAML syntax error, a missing,
    corrupt or foreign ``--ckpt_path``, an option that conflicts with the checkpoint's
    hyperparameters) is reported as one line, ``error: <message>`` naming the input and the
    fix, with exit code 2 and no traceback; ``--debug`` (anywhere in ``args``) or
    ``SPECIALIST_FINETUNERS_DEBUG=1`` adds the traceback. Bugs keep their traceback.

    Args:
        module_cls: The app's ``FineTuneModule`` subclass (``--model.*``).
        datamodule_cls: The app's ``LightningDataModule`` (``--data.*``).
        default_config: The app's LightningCLI YAML (keys ``model``, ``data``, ``trainer``,
            ``seed_everything``, ...), read first by every subcommand; ``--config`` files
            and dotted options override it.
        args: Command-line arguments; ``None`` reads ``sys.argv[1:]``. Without a subcommand
            (an empty list, or only options such as ``--config tiny.yaml``) the run fits and
            then tests the fitted weights, in one run directory. A top-level ``--help``
            lists the subcommands.
        app_name: Names the default run root ``runs/<app_name>``; defaults to the package
            of ``module_cls``.
        subclass_mode: Let the config pick the module class (``model: {class_path: ...,
            init_args: ...}``, any subclass of ``module_cls``), so one entry point serves
            several recipes (report generation, classification, ...).
        exit_on_error: Report bad input as one line and exit with code 2 (``SystemExit``).
            ``None`` (the default) does so only when ``args`` is ``None``, i.e. when the app
            runs as a command; called from Python with ``args`` the exception (a
            ``ValueError``, e.g. :class:`core.training.errors.UsageError`) propagates.
            Parse errors (unknown option, wrong type) exit with code 2 either way.
        links: ``{source: target}`` pairs of options that model and data share, e.g.
            ``{"data.image_size": "model.image_size"}``: the target is set from the source
            when the config is parsed, and giving the target is an error naming the source
            (:mod:`core.training.links`). Keys are spelled as options are (``model.x``, also
            where the config picks the model class).
        run: ``False`` parses ``args`` (options only, no subcommand) and instantiates the
            model, data module and trainer without running anything: a check that a recipe
            is complete (``main(["--config", recipe], run=False)``).

    Returns:
        The ``FineTuneCLI`` (``.trainer``, ``.model``, ``.datamodule``, ``.config``).
    """
    default_config = Path(default_config).resolve()
    if not default_config.is_file():
        raise FileNotFoundError(
            f"default config {str(default_config)!r} does not exist; pass the path of the "
            "app's configs/default.yaml to run_cli."
        )
    argv, debug = pop_debug_flag(sys.argv[1:] if args is None else args)
    debug = debug or debug_from_env()
    links = dict(links or {})
    check_links(links)
    fit_then_test = run and fits_then_tests(argv)
    if not run and subcommand_index(argv) is not None:
        raise ValueError(
            f"run_cli(run=False) instantiates without running; drop the subcommand "
            f"{argv[subcommand_index(argv)]!r} from args."
        )
    name = app_name or app_name_of(module_cls)
    packages = {top_package(module_cls), top_package(datamodule_cls), top_package(FineTuneCLI)}
    exiting = args is None if exit_on_error is None else exit_on_error
    with usage_errors_exit(packages, enabled=exiting, debug=debug):
        for path in [default_config, *yaml_files_in(argv)]:
            check_yaml_syntax(path)
        check_targets_not_given(links, argv, default_config)
        if fit_then_test:
            argv = ["fit", *argv]
        cli = _make_cli(
            module_cls,
            datamodule_cls,
            default_config,
            argv,
            name,
            subclass_mode,
            debug,
            links,
            run,
        )
        if fit_then_test:
            # Test the weights fit() ended with: the ones exported to <run_dir>/adapter.
            cli.trainer.test(cli.model, datamodule=cli.datamodule)
    return cli


def _make_cli(
    module_cls: type[pl.LightningModule],
    datamodule_cls: type[pl.LightningDataModule],
    default_config: Path,
    argv: list[str],
    name: str,
    subclass_mode: bool,
    debug: bool,
    links: dict[str, str],
    run: bool,
) -> FineTuneCLI:
    if run:
        cli_args = with_default_config(argv, default_config)
    else:  # no subcommand: the default config goes first
        cli_args = ["--config", str(default_config), *argv]
    with warnings.catch_warnings():
        # We always pass the arguments explicitly (to layer the default config under them).
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return FineTuneCLI(
            module_cls,
            datamodule_cls,
            app_name=name,
            default_config=default_config,
            debug=debug,
            links=links,
            args=cli_args,
            run=run,
            save_config_callback=AtomicSaveConfigCallback,
            subclass_mode_model=subclass_mode,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            parser_kwargs={
                sub: {
                    "epilog": f"The app's defaults are read from {default_config} before any "
                    "--config file or option given here (so its values are not shown as "
                    f"defaults above). Bad input stops with one line 'error: ...' and exit "
                    f"code 2; add {DEBUG_FLAG} (or set {DEBUG_ENV}=1) for the traceback."
                }
                for sub in SUBCOMMANDS
            },
            trainer_defaults={
                "default_root_dir": f"runs/{name}",
                "callbacks": [
                    AdapterExport(),
                    MetricsJson(),
                    PredictionsWriter(),
                    ReportWriter(),
                    ModuleClassStamp(),
                ],
            },
        )
