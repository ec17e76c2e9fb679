package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/shortleaf/shortleaf/pkg/adminclient"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

func newCACommand() *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Show and rotate the CA's keys",
		Long: "Intermediates and JWT keys rotate on their own: PREPARED -> ACTIVE -> OLD -> removed.\n" +
			"These verbs force a step (prepare, activate), take a compromised key out (taint, then revoke),\n" +
			"and step ahead of the root schedule (root prepare, root activate, root retire). Roots rotate on\n" +
			"their own too: the next root is prepared root_prepare_before the active one expires, takes over\n" +
			"once every live agent and federated consumer holds it, and the old root leaves the bundle when\n" +
			"nothing chains to it.",
		Args: cobra.NoArgs,
	}
	af.register(cmd)
	show := &cobra.Command{
		Use:   "show",
		Short: "List every authority with its state, lifetime, key reference and next transition, and bundle propagation",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				resp, err := c.ListAuthorities(ctx, &adminv1.ListAuthoritiesRequest{})
				if err != nil {
					return err
				}
				if af.json() {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				return printCAState(cmd, resp)
			})
		},
	}
	kindVerb := func(use, short string, call func(context.Context, *adminclient.Client, string) (*adminv1.Authority, error)) *cobra.Command {
		var kind string
		c := &cobra.Command{
			Use:   use,
			Short: short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
					a, err := call(ctx, c, kind)
					if err != nil {
						return err
					}
					return printAuthority(cmd, &af, a)
				})
			},
		}
		c.Flags().StringVar(&kind, "kind", "intermediate", "intermediate or jwt")
		return c
	}
	// idVerb runs a step on one authority; with showState (the step's past
	// tense) it then prints the CA's state as `ca show` does: after a
	// removal, what remains.
	idVerb := func(use, short, showState string, call func(context.Context, *adminclient.Client, string) (*adminv1.Authority, error)) *cobra.Command {
		return &cobra.Command{
			Use:   use,
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
					a, err := call(ctx, c, args[0])
					if err != nil {
						return err
					}
					if showState != "" {
						return printChangeAndState(ctx, cmd, &af, c, a, showState)
					}
					return printAuthority(cmd, &af, a)
				})
			},
		}
	}
	prepare := kindVerb("prepare", "Create the next intermediate or JWT key now, ahead of schedule",
		func(ctx context.Context, c *adminclient.Client, kind string) (*adminv1.Authority, error) {
			return c.PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{Kind: kind})
		})
	activate := kindVerb("activate", "Make the prepared intermediate or JWT key active now",
		func(ctx context.Context, c *adminclient.Client, kind string) (*adminv1.Authority, error) {
			return c.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{Kind: kind})
		})
	taint := idVerb("taint ID", "Stop trusting an old key: agents replace everything it signed within a sync interval", "",
		func(ctx context.Context, c *adminclient.Client, id string) (*adminv1.Authority, error) {
			return c.TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Id: id})
		})
	revoke := idVerb("revoke ID", "Remove a tainted key once no agent holds anything it signed; prints what remains", "revoked",
		func(ctx context.Context, c *adminclient.Client, id string) (*adminv1.Authority, error) {
			return c.RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Id: id})
		})
	cmd.AddCommand(show, prepare, activate, taint, revoke, newRootCommands(&af), newDrillCommand(&af))
	return cmd
}

func newRootCommands(af *adminFlags) *cobra.Command {
	root := &cobra.Command{Use: "root", Short: "Step ahead of the root schedule; every step is gated on propagation to live agents and federated consumers", Args: cobra.NoArgs}
	prepare := &cobra.Command{
		Use:   "prepare",
		Short: "Create a new root and add it to the trust bundle (it signs nothing yet)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				a, err := c.PrepareRoot(ctx, &adminv1.PrepareRootRequest{})
				if err != nil {
					return err
				}
				return printAuthority(cmd, af, a)
			})
		},
	}
	var force bool
	activate := &cobra.Command{
		Use:   "activate",
		Short: "Make new intermediates chain to the prepared root now; refused while a live agent or federated consumer lacks it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				resp, err := c.ActivateRoot(ctx, &adminv1.ActivateRootRequest{Force: force})
				if err != nil {
					return err
				}
				for _, a := range resp.GetLaggingAgents() {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: forced past %s, which does not hold the new root\n", a)
				}
				return printAuthority(cmd, af, resp.GetAuthority())
			})
		},
	}
	activate.Flags().BoolVar(&force, "force", false, "activate even though some live agents or federated consumers lack the new root (they will fail to verify new SVIDs); logged")
	retire := &cobra.Command{
		Use:   "retire",
		Short: "Remove the old root from the bundle now (prints what remains); refused while an intermediate or the server's certificate chains to it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				a, err := c.RetireRoot(ctx, &adminv1.RetireRootRequest{})
				if err != nil {
					return err
				}
				return printChangeAndState(ctx, cmd, af, c, a, "retired")
			})
		},
	}
	root.AddCommand(prepare, activate, retire)
	return root
}

// printChangeAndState prints the authority a step changed, then the CA's
// state after it; with -o json {"changed": …, "state": <ca show>}.
func printChangeAndState(ctx context.Context, cmd *cobra.Command, af *adminFlags, c *adminclient.Client, a *adminv1.Authority, what string) error {
	state, err := c.ListAuthorities(ctx, &adminv1.ListAuthoritiesRequest{})
	if err != nil {
		return err
	}
	if af.json() {
		changed, err := readableJSON(a)
		if err != nil {
			return err
		}
		after, err := readableJSON(state)
		if err != nil {
			return err
		}
		return writeJSON(cmd.OutOrStdout(), map[string]any{"result": what, "changed": changed, "state": after})
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s %s %s\n\nnow:\n", a.GetKind(), a.GetId(), what)
	return printCAState(cmd, state)
}

// printCAState is `ca show`'s table: authorities, propagation, root
// rotation and the server's certificate.
func printCAState(cmd *cobra.Command, resp *adminv1.ListAuthoritiesResponse) error {
	if err := printAuthorities(cmd, resp.GetAuthorities()...); err != nil {
		return err
	}
	p := resp.GetPropagation()
	fmt.Fprintf(cmd.OutOrStdout(), "\nbundle sequence %d: %d of %d live agents hold it\n", p.GetBundleSequence(), p.GetCurrentAgents(), p.GetLiveAgents())
	for _, a := range p.GetLaggingAgents() {
		fmt.Fprintf(cmd.OutOrStdout(), "  lagging: %s\n", a)
	}
	printRootRotation(cmd.OutOrStdout(), resp.GetRootRotation())
	printReplicas(cmd.OutOrStdout(), resp.GetReplicas())
	if sc := resp.GetServerCertificate(); sc != nil {
		fmt.Fprintf(cmd.OutOrStdout(), "\nserver TLS certificate %s: signed by %s, until %s\n",
			sc.GetSerialNumber(), orUnknown(sc.GetSignerId(), sc.GetSignerKeyId()), unixTime(sc.GetNotAfter()))
	}
	return nil
}

func printAuthority(cmd *cobra.Command, af *adminFlags, a *adminv1.Authority) error {
	if af.json() {
		return printJSON(cmd.OutOrStdout(), a)
	}
	return printAuthorities(cmd, a)
}

func printAuthorities(cmd *cobra.Command, auths ...*adminv1.Authority) error {
	rows := make([][]string, 0, len(auths))
	for _, a := range auths {
		state := a.GetState()
		if a.GetTainted() {
			state += ",tainted"
		}
		next := "-"
		if a.GetNextTransition() != "" {
			next = a.GetNextTransition() + " " + unixTime(a.GetNextTransitionAt())
		}
		seq := "-"
		if a.GetBundleSequence() > 0 {
			seq = strconv.FormatUint(a.GetBundleSequence(), 10)
		}
		replica := a.GetReplicaId()
		if replica == "" {
			replica = "(shared)"
		}
		rows = append(rows, []string{a.GetKind(), a.GetId(), replica, state, unixTime(a.GetNotBefore()), unixTime(a.GetNotAfter()),
			a.GetKeyRef(), seq, next})
	}
	return table(cmd.OutOrStdout(), []string{"KIND", "ID", "REPLICA", "STATE", "NOT BEFORE", "NOT AFTER", "KEY", "BUNDLE SEQ", "NEXT"}, rows)
}

// printReplicas lists the replicas (the one answering first) and the leader.
func printReplicas(w io.Writer, replicas []*adminv1.Replica) {
	if len(replicas) == 0 {
		return
	}
	fmt.Fprintln(w)
	for i, r := range replicas {
		var notes []string
		if i == 0 {
			notes = append(notes, "this server")
		}
		if r.GetLeader() {
			notes = append(notes, "leader")
		}
		if !r.GetLive() {
			notes = append(notes, "not live")
		}
		fmt.Fprintf(w, "replica %s: %d intermediates and JWT keys", r.GetId(), r.GetAuthorities())
		if len(notes) > 0 {
			fmt.Fprintf(w, " (%s)", strings.Join(notes, ", "))
		}
		fmt.Fprintln(w)
	}
}

// printRootRotation says where root rotation stands and, while the next root
// waits, what blocks it and by when it must pass.
func printRootRotation(w io.Writer, r *adminv1.RootRotation) {
	if r == nil {
		return
	}
	fmt.Fprintln(w)
	if !r.GetScheduled() {
		fmt.Fprintf(w, "root rotation: the upstream authority's (its certificate expires %s)\n", unixTime(r.GetRootNotAfter()))
		return
	}
	fmt.Fprintf(w, "root %s expires %s\n", r.GetActiveRootId(), unixTime(r.GetRootNotAfter()))
	switch {
	case r.GetPreparedRootId() != "":
		fmt.Fprintf(w, "next root %s prepared %s, waiting on the propagation gate\n", r.GetPreparedRootId(), unixTime(r.GetPreparedAt()))
		for _, b := range r.GetBlockers() {
			fmt.Fprintf(w, "  blocked by: %s\n", b)
		}
	case r.GetOldRootId() != "":
		fmt.Fprintf(w, "old root %s leaves the bundle at %s\n", r.GetOldRootId(), unixTime(r.GetRetireAt()))
	default:
		fmt.Fprintf(w, "next root is prepared at %s\n", unixTime(r.GetPrepareAt()))
	}
	fmt.Fprintf(w, "deadline for the next root to take over: %s (after it intermediates are cut short)\n", unixTime(r.GetDeadline()))
	fmt.Fprintf(w, "forced takeover, even if the gate still blocks: %s\n", unixTime(r.GetForceAt()))
}

func orUnknown(id, keyID string) string {
	if id != "" {
		return id
	}
	return "key " + keyID + " (no longer in the journal)"
}
