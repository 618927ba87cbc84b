// gitops-health prints how the GitOps tools judge AxolotlJobs, with their own code: Flux's kstatus
// (sigs.k8s.io/cli-utils/pkg/kstatus/status) and Argo CD's health script run in gopher-lua, the Lua VM
// Argo CD embeds. Input: a Kubernetes List (kubectl get axolotljobs -o json) on stdin. Output: one JSON
// object per item: {"name", "kstatus", "kstatusMessage", "argocd", "argocdMessage"}.
//
//	gitops-health docs/argocd/health.lua < list.json
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Name           string `json:"name"`
	KStatus        string `json:"kstatus"`
	KStatusMessage string `json:"kstatusMessage"`
	ArgoCD         string `json:"argocd"`
	ArgoCDMessage  string `json:"argocdMessage"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gitops-health HEALTH.lua < list.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err)
	}
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var list struct {
		Items []map[string]interface{} `json:"items"`
	}
	// Kubernetes' own JSON reader: whole numbers become int64, as unstructured objects expect.
	if err := utiljson.Unmarshal(data, &list); err != nil {
		fail(fmt.Errorf("reading the list: %w", err))
	}
	out := json.NewEncoder(os.Stdout)
	for _, item := range list.Items {
		obj := &unstructured.Unstructured{Object: item}
		result, err := status.Compute(obj)
		if err != nil {
			fail(fmt.Errorf("kstatus of %s: %w", obj.GetName(), err))
		}
		health, message, err := argoHealth(string(script), item)
		if err != nil {
			fail(fmt.Errorf("health script on %s: %w", obj.GetName(), err))
		}
		if err := out.Encode(verdict{obj.GetName(), result.Status.String(), result.Message, health, message}); err != nil {
			fail(err)
		}
	}
}

// argoHealth runs the script as Argo CD does: the object as the global `obj`, a table with status and
// message returned.
func argoHealth(script string, obj map[string]interface{}) (string, string, error) {
	state := lua.NewState(lua.Options{SkipOpenLibs: false})
	defer state.Close()
	state.SetGlobal("obj", toLua(state, obj))
	if err := state.DoString(script); err != nil {
		return "", "", err
	}
	returned, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the script returned %s, not a table", state.Get(-1).Type())
	}
	return lua.LVAsString(returned.RawGetString("status")), lua.LVAsString(returned.RawGetString("message")), nil
}

func toLua(state *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		table := state.NewTable()
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case map[string]interface{}:
		table := state.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	default:
		return lua.LString(fmt.Sprint(v))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gitops-health:", err)
	os.Exit(1)
}
