// Package tpm is the TPM 2.0 node attestor. The agent sends its TPM's
// endorsement key (EK) certificate, or the EK public key, and the
// parameters of an attestation key (AK) it created in the TPM. The server
// checks the EK (its certificate chains to a configured manufacturer CA,
// or its public key's hash is allowed), checks that the AK is a restricted
// signing key made by a TPM, and challenges with a credential only the TPM
// holding that EK can activate, and only for that AK: a fresh random
// secret, encrypted to the EK and bound to the AK's name, which the agent
// returns decrypted, with the AK's signature over a fresh nonce (a
// TPM2_Certify of a key the AK attested, the nonce as qualifying data).
// The agent ID is
// spiffe://<td>/agent/tpm/<SHA-256 of the EK public key>.
package tpm
