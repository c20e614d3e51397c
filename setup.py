"""Build hook: the wheel carries the top-level settings.ini as glscl/settings.ini (package data from that one file).

Everything else about the package is declared in pyproject.toml. settings.ini stays at the top of the repository, the
one home of every preset; at build time it is copied into the wheel's build folder only, never into glscl/ of the
source tree, so there is no second copy to keep in sync. Editable installs read the checkout's settings.ini directly
(glscl.settingsfiles.settings_files), so the hook does nothing for them. The sdist carries settings.ini through
MANIFEST.in.
"""
from pathlib import Path
from setuptools import setup
from setuptools.command.build_py import build_py

PRESETS = Path(__file__).resolve().parent/'settings.ini'

class build_py_with_presets(build_py):
    "build_py, plus settings.ini -> <build>/glscl/settings.ini."
    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False): return
        if not PRESETS.is_file():
            raise FileNotFoundError(
                f"{PRESETS} is missing: the wheel must ship the presets (restore settings.ini from git)")
        self.mkpath(str(Path(self.build_lib)/'glscl'))
        self.copy_file(str(PRESETS), str(Path(self.build_lib)/'glscl'/'settings.ini'))

    def get_outputs(self, include_bytecode=True):
        out = super().get_outputs(include_bytecode)
        return (out if getattr(self, 'editable_mode', False)
                else [*out, str(Path(self.build_lib)/'glscl'/'settings.ini')])

setup(cmdclass={'build_py': build_py_with_presets})
