"""Domain errors: plain Python, no HTTP. `service.api.errors` maps each to a status.

ServiceError
├── MalformedBody            the bytes cannot be read (bad JSON, truncated binary)
├── PayloadTooLarge          body (or its decompressed form) over the configured limit
├── UnsupportedMediaType     a Content-Type or Content-Encoding we do not speak
├── ModelNotFound            unknown model name
├── NotReady                 sessions not built yet, or shutting down
├── Overloaded               the in-flight bound is reached (503 + Retry-After)
├── EngineFailure            ONNX Runtime failed on a valid request (503)
├── RequestTimeout           the body did not arrive in time (408)
└── InvalidArgument          well-formed but unusable arguments
    ├── ShapeMismatch
    ├── UnsupportedDtype
    ├── InvalidDim
    ├── LabelOutOfRange
    ├── ValueOutOfRange      a value the requested dtype cannot hold
    └── TooLarge             more elements or dimensions than the configured limits
"""


class ServiceError(Exception):
    """Base of every error a client can cause; `str(exc)` is safe to send back."""


class MalformedBody(ServiceError):
    pass


class PayloadTooLarge(ServiceError):
    pass


class UnsupportedMediaType(ServiceError):
    pass


class ModelNotFound(ServiceError):
    pass


class NotReady(ServiceError):
    pass


class Overloaded(ServiceError):
    pass


class EngineFailure(ServiceError):
    pass


class RequestTimeout(ServiceError):
    pass


class InvalidArgument(ServiceError):
    pass


class ShapeMismatch(InvalidArgument):
    pass


class UnsupportedDtype(InvalidArgument):
    pass


class InvalidDim(InvalidArgument):
    pass


class LabelOutOfRange(InvalidArgument):
    pass


class ValueOutOfRange(InvalidArgument):
    pass


class TooLarge(InvalidArgument):
    pass
