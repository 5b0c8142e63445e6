"""What the source digest reads: the factory's module and the local modules it imports,
never an installed library's, wherever that library is installed."""

import sys

from mscompile.loading import local_modules


def _project(tmp_path, monkeypatch):
    libs, proj = tmp_path / "libs", tmp_path / "proj"
    (libs / "biglib").mkdir(parents=True)
    (libs / "biglib-1.0.dist-info").mkdir()
    (libs / "biglib-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: biglib\nVersion: 1.0\n")
    (libs / "biglib-1.0.dist-info" / "top_level.txt").write_text("biglib\n")
    (libs / "biglib" / "__init__.py").write_text("from . import core\n")
    (libs / "biglib" / "core.py").write_text("X = 1\n")
    proj.mkdir()
    (proj / "mymodel.py").write_text("import biglib\nimport helper\n\nclass Net:\n    pass\n")
    (proj / "helper.py").write_text("Y = 2\n")
    monkeypatch.chdir(proj)
    monkeypatch.syspath_prepend(str(libs))  # as PYTHONPATH, --target or a .pth file put it
    for cached in ("_installed_tops", "_library_roots"):
        getattr(sys.modules["mscompile.loading"], cached).cache_clear()
    return libs, proj


def test_a_library_outside_site_packages_is_not_crawled(tmp_path, monkeypatch):
    """transformers reached through a .pth file was crawled module by module: 5 min 19 s
    before a BERT build's first pass."""
    _project(tmp_path, monkeypatch)
    assert sorted(local_modules("mymodel:Net")) == ["helper", "mymodel"]


def test_a_package_without_distribution_metadata_is_the_users_code(tmp_path, monkeypatch):
    libs, _ = _project(tmp_path, monkeypatch)
    for f in (libs / "biglib-1.0.dist-info").iterdir():
        f.unlink()
    (libs / "biglib-1.0.dist-info").rmdir()
    sys.modules["mscompile.loading"]._installed_tops.cache_clear()
    assert sorted(local_modules("mymodel:Net")) == ["biglib", "biglib.core", "helper", "mymodel"]
