"""Every case of ``shared/reliability/bad-inputs.md`` has a parametrised test here.

The case names are the ids of the parametrised tests in ``tests/reliability``
(one module per area: storage, ingest, api, cli, env, cluster). The list is
kept here too, so the check runs where ``../shared`` is absent; where it is
present, the two lists must agree.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re

import pytest

import tests.reliability as pkg

CASES = """
coo_overflow_index coo_int32_near_max coo_dask_neg_index dense_strings dense_object_none
dense_list_of_str dense_dask_unknown_chunks csv_missing_id csv_inf_id csv_dup_header
csv_sep_multi open_truncated_chunk_then_complete open_garbled_rows_chunk_complete
open_attr_rowbounds open_attr_value_norm open_attr_nnz_str open_attr_missing_key
store_row_index_out_of_tile store_row_index_60 store_row_index_neg store_value_nan
store_tileptr_edit complete_all_zero_values complete_huge_values complete_address_garbage
complete_validation_list rpca_all_nan rpca_dask_unknown rpca_dask_inf rpca_dask_nan_all_row
load_deleted_L_chunk load_truncated_L_chunk load_attr_factors_bad load_attr_missing_status
load_history_deleted predict_float_idx est_predict_unfitted est_rpca_transform_unfitted
cli_import_readonly_dir cli_complete_out_readonly cli_complete_out_exists
cli_complete_truncated_chunk cli_complete_scheduler_typo cli_import_corrupt_npz
cli_evaluate_deleted_L cli_info_corrupt_obs cli_demo_workers0 cli_demo_every0
""".split()

LIST = os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared", "reliability", "bad-inputs.md"
)


def _ids(mark) -> list[str]:
    """The ids a ``parametrize`` mark gives (explicit ids, pytest.param ids, or str values)."""
    ids = mark.kwargs.get("ids")
    if ids is not None and not callable(ids):
        return [str(i) for i in ids]
    out = []
    for v in mark.args[1]:
        if getattr(v, "id", None):
            out.append(v.id)
        elif isinstance(v, str):
            out.append(v)
    return out


def _tested_ids() -> set[str]:
    found = set()
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("test_bad_"):
            continue
        m = importlib.import_module(f"{pkg.__name__}.{mod.name}")
        for obj in vars(m).values():
            for mark in getattr(obj, "pytestmark", []):
                if mark.name == "parametrize":
                    found.update(_ids(mark))
    return found


def test_every_listed_case_has_a_test():
    missing = sorted(set(CASES) - _tested_ids())
    assert not missing, f"bad-inputs.md cases without a parametrised test: {missing}"


def test_list_matches_the_shared_file():
    if not os.path.exists(LIST):
        pytest.skip(f"{LIST} is absent (../shared is not beside this checkout)")
    names = re.findall(r"^- `([A-Za-z0-9_]+)`", open(LIST, encoding="utf-8").read(), re.M)
    assert sorted(names) == sorted(CASES)
