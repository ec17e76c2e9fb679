package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/shortleaf/shortleaf/attest"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// maxChallenges bounds the challenges one attestation answers: a server
// that keeps asking is not one to keep answering.
const maxChallenges = 4

// AttestCall runs one AttestAgent exchange: it sends first, answers each
// challenge with answer (nil: the attestation expects none, a join token),
// and returns the server's final answer.
func AttestCall(ctx context.Context, client agentv1.AgentAPIClient, first *agentv1.AttestAgentRequest, answer attest.Challenger) (*agentv1.AttestAgentResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.AttestAgent(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(first); err != nil {
		_, err = stream.Recv() // the server's refusal, when it sent one
		return nil, err
	}
	for range maxChallenges + 1 {
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		if len(resp.GetChallenge()) == 0 {
			return resp, nil
		}
		if answer == nil {
			return nil, errors.New("agent: attest: the server challenged an attestation that cannot answer")
		}
		reply, err := answer(ctx, resp.GetChallenge())
		if err != nil {
			return nil, fmt.Errorf("agent: attest: answer the server's challenge: %w", err)
		}
		if err := stream.Send(&agentv1.AttestAgentRequest{ChallengeResponse: reply}); err != nil {
			_, err = stream.Recv()
			return nil, err
		}
	}
	return nil, fmt.Errorf("agent: attest: the server sent more than %d challenges", maxChallenges)
}
