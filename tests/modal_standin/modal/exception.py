"""Stand-in for `modal.exception` (names and hierarchy as in the SDK)."""


class Error(Exception):
    pass


class AuthError(Error):
    pass


class NotFoundError(Error):
    pass


class ResourceExhaustedError(Error):
    pass


class TimeoutError(Error):  # noqa: A001 - the SDK's name
    pass


class FunctionTimeoutError(TimeoutError):
    pass


class RemoteError(Error):
    pass


class InputCancellation(BaseException):
    pass
