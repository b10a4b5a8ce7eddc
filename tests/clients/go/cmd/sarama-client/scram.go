package main

// A SCRAM client (RFC 5802) for sarama's Net.SASL.SCRAMClientGeneratorFunc, from the standard
// library alone: sarama leaves the mechanism to the caller.

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

type scramClient struct {
	newHash     func() hash.Hash
	user, pass  string
	clientNonce string
	firstBare   string
	serverSig   []byte
	step        int
}

func newSCRAMClient(mechanism string) *scramClient {
	if mechanism == "SCRAM-SHA-512" {
		return &scramClient{newHash: sha512.New}
	}
	return &scramClient{newHash: sha256.New}
}

func (c *scramClient) Begin(user, pass, _ string) error {
	nonce := make([]byte, 18)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	c.user, c.pass = user, pass
	c.clientNonce = base64.StdEncoding.EncodeToString(nonce)
	name := strings.NewReplacer("=", "=3D", ",", "=2C").Replace(user)
	c.firstBare = "n=" + name + ",r=" + c.clientNonce
	c.step = 0
	return nil
}

func (c *scramClient) mac(key []byte, msg string) []byte {
	m := hmac.New(c.newHash, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

func (c *scramClient) Step(challenge string) (string, error) {
	c.step++
	switch c.step {
	case 1:
		return "n,," + c.firstBare, nil
	case 2:
		fields := map[string]string{}
		for _, f := range strings.Split(challenge, ",") {
			if k, v, ok := strings.Cut(f, "="); ok {
				fields[k] = v
			}
		}
		nonce, saltB64, iterText := fields["r"], fields["s"], fields["i"]
		if !strings.HasPrefix(nonce, c.clientNonce) {
			return "", errors.New("scram: server nonce does not extend ours")
		}
		salt, err := base64.StdEncoding.DecodeString(saltB64)
		if err != nil {
			return "", fmt.Errorf("scram: salt: %w", err)
		}
		iterations, err := strconv.Atoi(iterText)
		if err != nil {
			return "", fmt.Errorf("scram: iterations: %w", err)
		}
		salted, err := pbkdf2.Key(c.newHash, c.pass, salt, iterations, c.newHash().Size())
		if err != nil {
			return "", err
		}
		withoutProof := "c=biws,r=" + nonce
		authMessage := c.firstBare + "," + challenge + "," + withoutProof
		clientKey := c.mac(salted, "Client Key")
		h := c.newHash()
		h.Write(clientKey)
		signature := c.mac(h.Sum(nil), authMessage)
		proof := make([]byte, len(clientKey))
		for i := range clientKey {
			proof[i] = clientKey[i] ^ signature[i]
		}
		c.serverSig = c.mac(c.mac(salted, "Server Key"), authMessage)
		return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
	default:
		verifier, ok := strings.CutPrefix(challenge, "v=")
		if !ok {
			return "", fmt.Errorf("scram: server final message %q", challenge)
		}
		got, err := base64.StdEncoding.DecodeString(verifier)
		if err != nil || !hmac.Equal(got, c.serverSig) {
			return "", errors.New("scram: server signature does not verify")
		}
		return "", nil
	}
}

func (c *scramClient) Done() bool { return c.step >= 3 }
