package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/datastore"
)

// invalid is an InvalidArgument naming the field at fault.
func invalid(field, format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "%s: %s", field, fmt.Sprintf(format, args...))
}

// toStatus maps a domain error to a gRPC status. Unexpected errors are logged
// here, once, and reach the caller as a bare Internal.
func toStatus(ctx context.Context, log *slog.Logger, op string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var reqErr *ca.RequestError
	var refused *ca.RefusedError
	switch {
	case errors.As(err, &refused):
		return status.Error(codes.FailedPrecondition, refused.Error())
	case errors.Is(err, ca.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.As(err, &reqErr):
		return status.Errorf(codes.InvalidArgument, "%s: %s", reqErr.Field, reqErr.Reason)
	case errors.Is(err, datastore.ErrNotFound):
		return status.Error(codes.NotFound, "not found")
	case errors.Is(err, datastore.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, "an equal record already exists")
	case errors.Is(err, datastore.ErrTokenInvalid):
		return status.Error(codes.PermissionDenied, "join token is unknown, already used or wrong")
	case errors.Is(err, datastore.ErrTokenExpired):
		return status.Error(codes.PermissionDenied, "join token has expired")
	case errors.Is(err, ca.ErrNoActiveIntermediate), errors.Is(err, ca.ErrSignerExpired), errors.Is(err, ca.ErrSignerNotYetValid):
		log.ErrorContext(ctx, "CA cannot sign", slog.String("op", op), slog.Any("error", err))
		return status.Error(codes.Unavailable, "the CA cannot sign right now")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	default:
		log.ErrorContext(ctx, "request failed", slog.String("op", op), slog.Any("error", err))
		return status.Error(codes.Internal, "internal error")
	}
}

// objectStatus is toStatus for a call about one named object (kind is
// "entry", "agent", "federation", …): "not found" and "already exists" name
// the object, and the existing one where the store knows it.
func objectStatus(ctx context.Context, log *slog.Logger, op, kind, name string, err error) error {
	var exists *datastore.ExistsError
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s %q not found", kind, name)
	case errors.As(err, &exists):
		return status.Errorf(codes.AlreadyExists, "an equal %s already exists: %s %q (same SPIFFE ID, parent and selectors)", kind, kind, exists.ID)
	case errors.Is(err, datastore.ErrAlreadyExists):
		return status.Errorf(codes.AlreadyExists, "%s %q already exists", kind, name)
	}
	return toStatus(ctx, log, op, err)
}
