import pytest
from polyq_jsonfile import JSONFileBackend

from polyq.testing.conformance import BackendSuite


class TestJSONFileBackend(BackendSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def backend_url(cls, tmp_path_factory):
        return f"jsonfile://{tmp_path_factory.mktemp('store')}/results.json"

    def make_backend(self, url, **options):
        # Not installed as an entry point yet: build the class directly.
        return JSONFileBackend(url, **options)
