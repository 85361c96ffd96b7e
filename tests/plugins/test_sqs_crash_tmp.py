import uuid, pytest
from polyq.testing import services
from polyq.testing.conformance.e2e import CrashSuite
class TestSQSCrash(CrashSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return f"{services.sqs_url()}&queue_name_prefix=c{uuid.uuid4().hex[:6]}-"
    @pytest.fixture(scope="class")
    def backend_url(self) -> str:
        return f"{services.dynamodb_url()}&table=pqc_{uuid.uuid4().hex[:8]}"
